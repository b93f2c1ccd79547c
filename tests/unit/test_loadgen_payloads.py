"""loadgen payloads: valid requests are dataset rows in both shapes; invalid ones break a rule."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from contract.features import FEATURE_NAMES, FEATURES, N_FEATURES
from loadgen.payloads import (
    INVALID_BUILDERS,
    INVALID_KINDS,
    PREDICT,
    PREDICT_BATCH,
    LabelledRow,
    Mix,
    PayloadFactory,
    RowSource,
    load_rows,
)


@pytest.fixture(scope="module")
def rows() -> list[LabelledRow]:
    return load_rows()


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _values(obj: dict) -> list:
    if "patient" in obj:
        assert set(obj["patient"]) == set(FEATURE_NAMES)
        return [obj["patient"][name] for name in FEATURE_NAMES]
    return obj["features"]


def _valid_row(values: list) -> bool:
    return len(values) == N_FEATURES and all(
        _is_number(v) and f.minimum <= v <= f.maximum for v, f in zip(values, FEATURES, strict=True)
    )


def test_rows_come_from_the_dataset_with_labels(rows: list[LabelledRow]) -> None:
    assert len(rows) == 1000
    assert {r.label for r in rows} == {0, 1, 2}
    assert all(_valid_row(list(r.features)) for r in rows)


def test_valid_requests_carry_dataset_rows_in_both_shapes(rows: list[LabelledRow]) -> None:
    known = {r.features for r in rows}
    factory = PayloadFactory(RowSource(rows), Mix({}, batch_share=0.2), random.Random(1))
    kinds: Counter[str] = Counter()
    for _ in range(500):
        spec = factory.next()
        kinds[spec.kind] += 1
        assert spec.valid
        obj = json.loads(spec.body)
        if spec.kind == "batch":
            assert spec.path == PREDICT_BATCH
            objs = obj["rows"]
            assert len(objs) == 10 == len(spec.labels)
        else:
            assert spec.path == PREDICT
            objs = [obj]
            assert len(spec.labels) == 1
            assert set(obj) == {spec.kind}
        for row in objs:
            assert tuple(_values(row)) in known
    assert set(kinds) == {"features", "patient", "batch"}


def test_labels_match_the_rows_sent(rows: list[LabelledRow]) -> None:
    by_features: dict[tuple[int, ...], set[int | None]] = {}
    for r in rows:
        by_features.setdefault(r.features, set()).add(r.label)
    factory = PayloadFactory(RowSource(rows), Mix({}, batch_share=0.5), random.Random(2))
    for _ in range(200):
        spec = factory.next()
        obj = json.loads(spec.body)
        objs = obj["rows"] if spec.kind == "batch" else [obj]
        for row, label in zip(objs, spec.labels, strict=True):
            assert label in by_features[tuple(_values(row))]


@pytest.mark.parametrize("seed", range(40))
def test_each_invalid_kind_breaks_the_contract(rows: list[LabelledRow], seed: int) -> None:
    rng = random.Random(seed)
    row = rng.choice(rows)
    body = INVALID_BUILDERS["wrong_count"](row, rng)
    assert len(json.loads(body)["features"]) != N_FEATURES

    values = _values(json.loads(INVALID_BUILDERS["non_numeric"](row, rng)))
    assert len(values) == N_FEATURES and sum(not _is_number(v) for v in values) == 1

    values = _values(json.loads(INVALID_BUILDERS["out_of_range"](row, rng)))
    assert all(_is_number(v) for v in values) and not _valid_row(values)

    with pytest.raises(json.JSONDecodeError):
        json.loads(INVALID_BUILDERS["malformed_json"](row, rng))

    assert INVALID_BUILDERS["empty_body"](row, rng) == b""


def test_mix_shares_are_respected(rows: list[LabelledRow]) -> None:
    invalid = {kind: 0.06 for kind in INVALID_KINDS}  # 30% invalid in all
    factory = PayloadFactory(
        RowSource(rows), Mix(invalid, batch_share=0.5, patient_share=0.5), random.Random(3)
    )
    n = 20_000
    kinds = Counter(factory.next().kind for _ in range(n))
    for kind in INVALID_KINDS:
        assert kinds[kind] / n == pytest.approx(0.06, abs=0.01)
    assert kinds["batch"] / n == pytest.approx(0.35, abs=0.02)
    assert kinds["features"] / n == pytest.approx(0.175, abs=0.02)
    assert kinds["patient"] / n == pytest.approx(0.175, abs=0.02)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"invalid": {"bogus": 0.1}},
        {"invalid": {"empty_body": 0.7, "wrong_count": 0.7}},
        {"invalid": {}, "batch_share": 1.5},
        {"invalid": {}, "batch_size": 0},
    ],
)
def test_mix_refuses_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Mix(**kwargs)
