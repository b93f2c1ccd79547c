"""loadgen --drift: shifted rows move the named features as documented, stay inside the ranges
the gateway accepts, lose their label, and mix with dataset rows at --drift-share."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter

import httpx
import pytest

from contract.features import FEATURE_NAMES, FEATURES, N_FEATURES
from loadgen import cli
from loadgen.drift import DEFAULT_PROFILE, PROFILES, DriftingRowSource, DriftProfile, Shift
from loadgen.payloads import LabelledRow, Mix, PayloadFactory, RowSource, load_rows

AGE, SMOKING, PASSIVE = (FEATURE_NAMES.index(n) for n in ("age", "smoking", "passive_smoker"))


@pytest.fixture(scope="module")
def rows() -> list[LabelledRow]:
    return load_rows()


def _in_range(values: tuple[int, ...] | list[int]) -> bool:
    return len(values) == N_FEATURES and all(
        isinstance(v, int) and f.minimum <= v <= f.maximum
        for v, f in zip(values, FEATURES, strict=True)
    )


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_keeps_every_value_valid(rows: list[LabelledRow], name: str) -> None:
    source = DriftingRowSource(rows, PROFILES[name])
    rng = random.Random(0)
    for _ in range(3000):
        row = source.draw(rng)
        assert _in_range(row.features), row
        assert row.label is None and row.shifted


def test_older_smokers_is_the_documented_shift(rows: list[LabelledRow]) -> None:
    profile = PROFILES["older-smokers"]
    assert DEFAULT_PROFILE == "older-smokers"
    rng = random.Random(1)
    for row in rows:
        shifted = profile.apply(row.features, rng)
        assert shifted[AGE] == min(row.features[AGE] + 25, 120)
        assert shifted[SMOKING] in (7, 8) and shifted[PASSIVE] in (7, 8)
        untouched = set(range(N_FEATURES)) - {AGE, SMOKING, PASSIVE}
        assert all(shifted[i] == row.features[i] for i in untouched)
    # Both top levels occur, so the shifted feature is not a constant.
    levels = Counter(profile.apply(rows[0].features, rng)[SMOKING] for _ in range(200))
    assert set(levels) == {7, 8}
    assert "age +25 (clamped to 1..120)" in profile.describe()
    assert "smoking drawn from its top levels 7..8" in profile.describe()


def test_shifts_clamp_to_the_accepted_range() -> None:
    rng = random.Random(2)
    old = [110, *([1] * (N_FEATURES - 1))]
    assert PROFILES["older"].apply(old, rng)[AGE] == 120
    assert Shift("age", "add", -50).apply(30, rng) == 1
    assert Shift("gender", "top", 5).apply(1, rng) in (1, 2)  # more levels than the scale has
    for bad in (("height", "add", 1), ("age", "scale", 2), ("smoking", "top", 0)):
        with pytest.raises(ValueError):
            Shift(*bad)


def test_the_shift_is_large_where_it_should_be(rows: list[LabelledRow]) -> None:
    """The shifted rows' ages sit ~25 years above the dataset's; smokers dominate."""
    source = DriftingRowSource(rows, PROFILES["older-smokers"])
    rng = random.Random(3)
    drawn = [source.draw(rng) for _ in range(2000)]
    before = statistics.mean(r.features[AGE] for r in rows)
    after = statistics.mean(r.features[AGE] for r in drawn)
    assert after - before == pytest.approx(25, abs=1.5)
    top_share = sum(r.features[SMOKING] >= 7 for r in rows) / len(rows)
    assert top_share < 0.35  # the dataset's own share of heavy smokers
    assert all(r.features[SMOKING] >= 7 for r in drawn)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_drift_share_mixes_shifted_and_dataset_rows(rows: list[LabelledRow], share: float) -> None:
    source = DriftingRowSource(rows, PROFILES["older-smokers"], share)
    known = {r.features: r.label for r in rows}
    rng = random.Random(4)
    drawn = [source.draw(rng) for _ in range(5000)]
    shifted = [r for r in drawn if r.shifted]
    assert len(shifted) / len(drawn) == pytest.approx(share, abs=0.03)
    for row in drawn:
        if not row.shifted:  # a dataset row, as it is, with its true level
            assert row.features in known and row.label == known[row.features]


def test_drift_share_out_of_range_is_refused(rows: list[LabelledRow]) -> None:
    with pytest.raises(ValueError):
        DriftingRowSource(rows, PROFILES["older"], 1.5)


def test_requests_count_their_shifted_rows(rows: list[LabelledRow]) -> None:
    source = DriftingRowSource(rows, PROFILES["older-smokers"], 0.5)
    factory = PayloadFactory(source, Mix({}, batch_share=0.3, batch_size=8), random.Random(5))
    for _ in range(300):
        spec = factory.next()
        obj = json.loads(spec.body)
        objs = obj["rows"] if spec.kind == "batch" else [obj]
        values = [
            tuple(o["features"] if "features" in o else [o["patient"][n] for n in FEATURE_NAMES])
            for o in objs
        ]
        assert all(_in_range(v) for v in values)
        assert spec.shifted == sum(label is None for label in spec.labels)


def test_a_plain_row_source_shifts_nothing(rows: list[LabelledRow]) -> None:
    factory = PayloadFactory(RowSource(rows), Mix({}, batch_share=0.5), random.Random(6))
    assert all(factory.next().shifted == 0 for _ in range(100))


def test_cli_options() -> None:
    assert cli.resolve([]).args.drift is None
    options = cli.resolve(["--drift"])
    assert options.args.drift == "older-smokers"
    assert "drift older-smokers on 100% of rows" in options.profile
    options = cli.resolve(["--drift", "older", "--drift-share", "0.25"])
    source = cli.row_source(options.args)
    assert isinstance(source, DriftingRowSource)
    assert (source.profile.name, source.share) == ("older", 0.25)
    assert type(cli.row_source(cli.resolve([]).args)) is RowSource


@pytest.mark.parametrize(
    "argv",
    [["--drift", "bogus"], ["--drift-share", "0.5"], ["--drift", "--drift-share", "2"]],
)
def test_cli_refuses_bad_drift_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.resolve(argv)
    assert excinfo.value.code == cli.EXIT_USAGE


def _range_checking_gateway(request: httpx.Request) -> httpx.Response:
    """A stand-in gateway that refuses what the real one refuses: any value out of range."""
    body = json.loads(request.content)
    objs = body.get("rows", [body])
    for obj in objs:
        values = obj.get("features") or [obj["patient"][n] for n in FEATURE_NAMES]
        if not _in_range(values):
            return httpx.Response(422, json={"error": "invalid_request"})
    predictions = [{"prediction": 2, "prediction_id": f"id{i}"} for i in range(len(objs))]
    if "rows" in body:
        return httpx.Response(200, json={"predictions": predictions})
    return httpx.Response(200, json=predictions[0])


def test_main_reports_drift_and_every_shifted_row_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(_range_checking_gateway)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out = tmp_path / "r.json"
    argv = ["--rate", "500", "--requests", "200", "--quiet", "--seed", "3", "--json", str(out)]
    argv += ["--drift", "--drift-share", "0.5", "--batch-share", "0.2", "--batch-size", "5"]
    assert cli.main(argv) == cli.EXIT_OK
    report = json.loads(out.read_text())
    assert report["status_codes"] == {"200": 200}
    drift = report["drift"]
    assert drift["profile"] == "older-smokers" and drift["share"] == 0.5
    rows_sent = 200 + 4 * report["kinds"]["batch"]["sent"]  # a batch carries 5 rows
    assert drift["shifted_rows_sent"] == drift["shifted_rows_answered"]
    assert drift["shifted_rows_sent"] / rows_sent == pytest.approx(0.5, abs=0.08)
    # Shifted rows have no true level: only the dataset rows are scored.
    assert report["accuracy"]["labelled_rows"] == rows_sent - drift["shifted_rows_sent"]
    assert "drift       older-smokers on 50% of rows" in capsys.readouterr().out


def test_drift_profile_describes_every_shift() -> None:
    profile = DriftProfile("x", "two", (Shift("age", "add", 5), Shift("obesity", "top", 1)))
    assert profile.describe() == "age +5 (clamped to 1..120), obesity drawn from its top levels 7"
