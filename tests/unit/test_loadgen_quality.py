"""loadgen --quality without network: injected rows of each data-quality kind, repeated rows
sent as pairs under keys of their own, and a tally that equals the gateway's own counting
(api.quality.QualityMonitor, fed the same rows in the same order) exactly when no other row
carries a key, and brackets it when rows share keys or answers were lost."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api.quality import QualityMonitor
from contract.drift import profile_digest, value_ranges
from contract.features import FEATURE_NAMES, FEATURES
from loadgen import cli
from loadgen.drift import PROFILES, DriftingRowSource
from loadgen.payloads import (
    STICKY_HEADER,
    LabelledRow,
    Mix,
    PayloadFactory,
    RequestSpec,
    RowSource,
    StickyKeys,
    load_rows,
)
from loadgen.prometheus import Snapshot, quality_key, reconcile
from loadgen.quality import (
    EDGE,
    OUTSIDE,
    QUALITY_KINDS,
    REPEATED,
    ROW,
    UNSEEN,
    QualityRows,
    QualityTally,
    Reference,
    flat,
)
from loadgen.runner import RunPlan, run
from loadgen.stats import TIMEOUT, Outcome, Recorder
from telemetry import build_telemetry
from tests.support.metric_reader import point_values

ROWS = load_rows()
DATASET = [r.features for r in ROWS]
EVERY_KIND = {kind: 0.1 for kind in QUALITY_KINDS}


def in_range(row: tuple[int, ...]) -> bool:
    return all(f.minimum <= v <= f.maximum for f, v in zip(FEATURES, row, strict=True))


@pytest.mark.parametrize(
    ("kind", "kinds"),
    [
        (EDGE, {("age", OUTSIDE), ("age", EDGE), (ROW, UNSEEN)}),
        (OUTSIDE, {("age", OUTSIDE), (ROW, UNSEEN)}),
        (UNSEEN, {(ROW, UNSEEN)}),
    ],
)
def test_injected_rows_are_valid_and_flag_exactly_their_kind(
    kind: str, kinds: set[tuple[str, str]]
) -> None:
    reference = Reference.of(DATASET)
    assert reference.ranges[0] == (14, 73) and len(reference.profiles) == 152
    builder = QualityRows(reference, DATASET)
    rng = random.Random(1)
    for _ in range(300):
        row = builder.row(kind, rng)
        assert in_range(row)
        assert set(reference.kinds(row)) == kinds
        if kind == EDGE:
            assert row[0] in (1, 120)
        if kind == OUTSIDE:
            assert 1 < row[0] < 14 or 73 < row[0] < 120
        # One value changed from some dataset row: otherwise the row is as patients are.
        assert min(sum(a != b for a, b in zip(row, d, strict=True)) for d in DATASET) == 1


def test_dataset_rows_flag_nothing_against_themselves() -> None:
    reference = Reference.of(DATASET)
    assert all(reference.kinds(row) == [] for row in DATASET)


def test_a_reference_that_already_covers_the_accepted_range_is_refused() -> None:
    full = [tuple(f.minimum for f in FEATURES), tuple(f.maximum for f in FEATURES)]
    builder = QualityRows(Reference.of(full), full)
    for kind in (EDGE, OUTSIDE):
        with pytest.raises(ValueError, match=kind):
            builder.check([kind])
    builder.check([UNSEEN, REPEATED])
    with pytest.raises(ValueError, match="outside_training_range"):
        PayloadFactory(
            RowSource([LabelledRow(r, 0) for r in full]), Mix({}, quality={OUTSIDE: 0.5}), rng()
        )


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def test_a_repeated_row_is_one_row_twice_under_a_key_of_its_own() -> None:
    factory = PayloadFactory(
        RowSource(ROWS), Mix({}, quality={REPEATED: 1.0}), rng(2), StickyKeys(5, seed=2)
    )
    keys = set()
    for _ in range(50):
        spec = factory.next()
        assert spec.kind == REPEATED and spec.then is not None and spec.then.then is None
        assert spec.sticky_key == spec.then.sticky_key
        assert (spec.body, spec.rows, spec.labels) == (spec.then.body, spec.then.rows, spec.labels)
        assert spec.labels[0] is not None  # a dataset row: it keeps its level for --feedback
        keys.add(spec.sticky_key)
    assert len(keys) == 50 and not keys & set(factory.sticky.keys)  # type: ignore[union-attr]
    # A rerun with the same seed draws other keys: it cannot continue an earlier run's pair.
    again = PayloadFactory(RowSource(ROWS), Mix({}, quality={REPEATED: 1.0}), rng(2))
    assert again.next().sticky_key not in keys
    assert factory.injected == Counter({REPEATED: 50})


def test_without_quality_the_request_sequence_is_unchanged() -> None:
    mix = Mix({"empty_body": 0.1}, batch_share=0.2)
    a = PayloadFactory(RowSource(ROWS), mix, rng(5))
    b = PayloadFactory(RowSource(ROWS), Mix({"empty_body": 0.1}, 0.2, quality={}), rng(5))
    for _ in range(100):
        x, y = a.next(), b.next()
        assert (x.kind, x.body) == (y.kind, y.body)
        assert x.kind == "empty_body" or len(x.rows) == len(x.labels) > 0


# --- the tally against the gateway's own counting ---------------------------------------------
@dataclass
class Gateway:
    """api.quality.QualityMonitor with the dataset as its training reference."""

    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        telemetry = build_telemetry("test", metric_readers=[self.reader], prometheus=False)
        self.monitor = QualityMonitor(telemetry)
        self.monitor.set_reference(
            {
                "ranges": value_ranges(DATASET),
                "profiles": sorted({profile_digest(r) for r in DATASET}),
            }
        )

    def answer(self, spec: RequestSpec, key: str | None) -> None:
        answers = [(0, (0.8, 0.1, 0.1))] * len(spec.rows)
        self.monitor.observe(spec.rows, answers, "1", key)

    def counts(self) -> dict[tuple[str, str], int]:
        return {
            (dict(k)["feature"], dict(k)["kind"]): int(v)
            for k, v in point_values(self.reader, "model_input_quality_total").items()
            if v
        }


def outcome(spec: RequestSpec, status: int | None = 200, error: str | None = None) -> Outcome:
    return Outcome(spec, 0.0, 0.0, 0.0, status, error)


def sequence(factory: PayloadFactory, n: int) -> Iterator[RequestSpec]:
    for _ in range(n):
        spec: RequestSpec | None = factory.next()
        while spec is not None:
            yield spec
            spec = spec.then


@pytest.mark.parametrize("drift", [False, True])
def test_the_tally_is_what_the_gateway_counts(drift: bool) -> None:
    source = DriftingRowSource(ROWS, PROFILES["older"], 0.3) if drift else RowSource(ROWS)
    mix = Mix({"wrong_count": 0.05}, batch_share=0.3, batch_size=4, quality=EVERY_KIND)
    factory = PayloadFactory(source, mix, rng(7))
    gateway, tally = Gateway(), QualityTally(Reference.of(DATASET), api_key=False)
    for spec in sequence(factory, 400):
        if spec.valid:
            gateway.answer(spec, spec.sticky_key)
            tally.observe(outcome(spec))
        else:
            tally.observe(outcome(spec, 422))
    summary = tally.summary(factory.injected)
    assert summary["exact"] and summary["uncertain"] == {}
    assert flat(summary["expected"]) == gateway.counts()
    assert set(summary["injected"]) == set(QUALITY_KINDS)
    assert summary["expected"][ROW][REPEATED] == factory.injected[REPEATED] > 0
    if drift:  # ages moved by +25 leave the training range without a row being injected
        assert summary["expected"]["age"][OUTSIDE] > sum(
            factory.injected[k] for k in (OUTSIDE, EDGE)
        )


@pytest.mark.parametrize("api_key", [False, True])
def test_rows_that_share_a_key_make_a_range_that_holds_the_gateways_count(api_key: bool) -> None:
    # Few keys, few profiles, batches: chance repeats under a shared key are common; the
    # gateway sees the requests in an order loadgen cannot know (here: shuffled).
    rows = RowSource(ROWS[:3])
    mix = Mix({}, batch_share=0.3, batch_size=3, quality={REPEATED: 0.2})
    sticky = None if api_key else StickyKeys(2, seed=1)
    for seed in range(5):
        factory = PayloadFactory(rows, mix, rng(seed), sticky)
        specs = list(sequence(factory, 120))
        # The other requests in any order; a pair stays in place, its second after its
        # first (loadgen awaits the first's answer).
        ordinary = [i for i, spec in enumerate(specs) if spec.kind != REPEATED]
        shuffled = iter(random.Random(seed).sample(ordinary, len(ordinary)))
        order = [next(shuffled) if s.kind != REPEATED else i for i, s in enumerate(specs)]
        gateway, tally = Gateway(), QualityTally(Reference.of(DATASET), api_key=api_key)
        for i in order:
            spec = specs[i]
            key = spec.sticky_key if spec.sticky_key is not None else ("api" if api_key else None)
            gateway.answer(spec, key)
            tally.observe(outcome(spec))
        summary = tally.summary()
        low = flat(summary["expected"]).get((ROW, REPEATED), 0)
        high = low + flat(summary["uncertain"]).get((ROW, REPEATED), 0)
        counted = gateway.counts().get((ROW, REPEATED), 0)
        assert not summary["exact"]
        assert low <= counted <= high, (low, counted, high)
        assert counted > factory.injected[REPEATED]  # chance repeats happened
        # Only the repeat kind is uncertain: ranges and profiles do not depend on order.
        assert set(flat(summary["uncertain"])) == {(ROW, REPEATED)}


def test_lost_answers_widen_the_range_and_refused_ones_count_nothing() -> None:
    reference = Reference.of(DATASET)
    edge_row = (1, *DATASET[0][1:])
    spec = RequestSpec("at_range_edge", "/predict", b"{}", (None,), rows=(edge_row,))
    tally = QualityTally(reference, api_key=False)
    tally.observe(outcome(spec, None, TIMEOUT))
    tally.observe(outcome(spec, None, "connection"))  # never reached the gateway
    tally.observe(outcome(spec, 503))  # not answered: not counted
    tally.observe(outcome(spec, 200))
    summary = tally.summary()
    assert summary["expected"] == {"age": {EDGE: 1, OUTSIDE: 1}, ROW: {UNSEEN: 1}}
    assert summary["uncertain"] == summary["expected"] and not summary["exact"]

    # A pair whose first answer was lost: the second may or may not be a repeat.
    pair = RequestSpec(REPEATED, "/predict", b"{}", (0,), sticky_key="q1", rows=(DATASET[0],))
    tally = QualityTally(reference, api_key=False)
    tally.observe(outcome(pair, None, TIMEOUT))
    tally.observe(outcome(pair, 200))
    assert tally.summary()["uncertain"] == {ROW: {REPEATED: 1}}
    assert tally.summary()["expected"] == {}


# --- the runner sends pairs one after the other ------------------------------------------------
@dataclass
class SlowGateway:
    """Answers after a pause; notes any key with two requests in flight at once."""

    in_flight: Counter[str] = field(default_factory=Counter)
    overlapped: list[str] = field(default_factory=list)
    bodies: defaultdict[str | None, list[bytes]] = field(default_factory=lambda: defaultdict(list))

    async def handler(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get(STICKY_HEADER)
        self.bodies[key].append(request.content)
        if key is not None:
            if self.in_flight[key]:
                self.overlapped.append(key)
            self.in_flight[key] += 1
        await asyncio.sleep(0.002)
        if key is not None:
            self.in_flight[key] -= 1
        return httpx.Response(
            200, json={"prediction": 0, "model_version": "1", "prediction_id": "ab" * 32}
        )


def test_the_second_of_a_pair_is_sent_once_the_first_is_answered() -> None:
    fake = SlowGateway()
    factory = PayloadFactory(RowSource(ROWS), Mix({}, quality={REPEATED: 1.0}), rng(3))
    plan = RunPlan(offsets=(i * 0.0005 for i in itertools.count()), requests=60)
    transport = httpx.MockTransport(fake.handler)  # type: ignore[arg-type]  # async handler
    recorder = asyncio.run(run("http://gw", plan, factory, progress=None, transport=transport))
    assert fake.overlapped == []
    assert len(fake.bodies) == 60 and None not in fake.bodies
    assert all(len(b) == 2 and b[0] == b[1] for b in fake.bodies.values())
    assert recorder.sent == 120 and recorder.follow_ups == 60
    assert recorder.kinds[REPEATED] == Counter({"sent": 120, "200": 120})
    # The schedule's rate counts the 60 scheduled requests, not their follow-ups.
    assert recorder.send_lag.get_total_count() == 60


# --- command line, report and reconciliation ---------------------------------------------------
def test_parse_quality() -> None:
    assert cli.parse_quality("0.2") == dict.fromkeys(QUALITY_KINDS, 0.05)
    assert cli.parse_quality("repeated_row=0.1,unseen_profile=0.05") == {
        REPEATED: 0.1,
        UNSEEN: 0.05,
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--quality", "bogus=0.1"],
        ["--quality", "1.5"],
        ["--quality", "0.6", "--invalid", "0.6"],
        ["--drift-keep-labels"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.resolve(argv)
    assert excinfo.value.code == cli.EXIT_USAGE


def test_shifted_rows_keep_their_level_when_asked() -> None:
    one = [ROWS[0]]
    kept = DriftingRowSource(one, PROFILES["older"], keep_labels=True)
    dropped = DriftingRowSource(one, PROFILES["older"])
    a, b = kept.draw(rng(4)), dropped.draw(rng(4))
    assert a.features == b.features == (ROWS[0].features[0] + 25, *ROWS[0].features[1:])
    assert a.shifted and b.shifted
    assert a.label == ROWS[0].label is not None and b.label is None


def _main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *argv: str) -> dict[str, Any]:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        items = body.get("rows", [body])
        predictions = [{"prediction": 0, "prediction_id": "ab" * 32} for _ in items]
        if "rows" in body:
            return httpx.Response(200, json={"predictions": predictions, "model_version": "1"})
        return httpx.Response(200, json={**predictions[0], "model_version": "1"})

    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out = tmp_path / "r.json"
    assert cli.main(["--rate", "1000", "--quiet", "--json", str(out), *argv]) == cli.EXIT_OK
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_main_reports_the_tally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _main(
        monkeypatch, tmp_path, "--requests", "200", "--quality", "0.4", "--seed", "8",
        "--batch-share", "0.2",
    )  # fmt: skip
    quality = report["quality"]
    assert quality["reference"] == {"rows": 1000, "profiles": 152}
    assert quality["exact"] is True
    injected = quality["injected"]
    assert sum(injected.values()) > 50 and all(injected.values())
    assert quality["expected"]["age"][EDGE] == injected[EDGE]
    assert quality["expected"][ROW][REPEATED] == injected[REPEATED]
    assert report["follow_ups"] == injected[REPEATED]
    assert report["sent"] == 200 + injected[REPEATED]
    text = capsys.readouterr().out
    assert "  quality     injected outside_training_range" in text
    assert (
        f"    expected  at_range_edge            age                        {injected[EDGE]}"
        in text
    )
    assert "    exact     yes" in text
    assert report["profile"].endswith("repeated_row 10%")


def test_an_api_key_makes_the_repeat_count_a_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LUNGWATCH_LOADGEN_API_KEY", "k" * 32)
    report = _main(monkeypatch, tmp_path, "--requests", "100", "--quality", "0.2")
    assert report["quality"]["exact"] is False
    assert ROW in report["quality"]["uncertain"]
    assert "    exact     no:" in capsys.readouterr().out


def snapshot(values: dict[str, int]) -> Snapshot:
    return Snapshot(0.0, {"api_total_requests_total": 0, "api_successful_requests_total": 0,
                          "api_failed_requests_total": 0, **values})  # fmt: skip


def test_reconcile_compares_every_quality_series() -> None:
    recorder = Recorder(start=0.0)
    edge, unseen, repeated = (
        quality_key("age", EDGE),
        quality_key(ROW, UNSEEN),
        quality_key(ROW, REPEATED),
    )
    before = snapshot({edge: 3})
    bounds = {("age", EDGE): (2, 2), (ROW, UNSEEN): (4, 6)}
    ok = reconcile(before, snapshot({edge: 5, unseen: 5}), recorder, bounds)
    assert ok.ok, ok.problems
    assert ok.observed[edge] == 2 and ok.expected[unseen] == (4, 6)
    wrong = reconcile(before, snapshot({edge: 4, unseen: 7, repeated: 1}), recorder, bounds)
    assert sorted(p.split(":")[0] for p in wrong.problems) == sorted([edge, unseen, repeated])
    # Without --quality the series are not compared at all.
    assert reconcile(before, snapshot({edge: 9}), recorder).ok


def test_feature_names_are_the_contracts() -> None:
    assert {f for f, _ in Reference.of(DATASET).kinds((1, *DATASET[0][1:]))} <= {
        *FEATURE_NAMES,
        ROW,
    }


def test_rows_of_one_keyed_request_are_compared_in_order() -> None:
    a, b = DATASET[0], DATASET[1]
    spec = RequestSpec(
        "batch", "/predict/batch", b"{}", (0, 0, 0, 0), sticky_key="k", rows=(a, a, b, a)
    )
    gateway, tally = Gateway(), QualityTally(Reference.of(DATASET), api_key=False)
    gateway.answer(spec, "k")
    tally.observe(outcome(spec))
    summary = tally.summary()
    # The second row certainly repeats the first; the first may repeat what the key sent
    # before this run.
    assert summary["expected"] == {ROW: {REPEATED: 1}} and gateway.counts() == {(ROW, REPEATED): 1}
    assert summary["uncertain"] == {ROW: {REPEATED: 1}}
