"""api.quality.QualityMonitor: the expected confusion matrix (CBPE) and its gauges against hand
sums, data-quality counters by kind, the bounded key memory, Brier and calibration counters
from feedback, and the same through the gateway's /predict and /feedback."""

from __future__ import annotations

import bisect
import hashlib
import hmac
import random
import struct
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api import quality, versions
from api.app import create_app
from api.prediction_ids import PredictionIds
from api.quality import BINS, QualityMonitor, brier, confidence_bin
from contract.dataset import read_rows
from contract.drift import profile_digest, value_ranges
from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES
from contract.settings import GatewaySettings
from telemetry import build_telemetry
from tests.support.metric_reader import point_values
from tests.unit.conftest import App, ScriptedModelClient

DATASET = [r.features for r in read_rows()]
GOOD = list(EXAMPLE_FEATURES)  # a dataset row: age 33, in every training range
Labels = tuple[tuple[str, str], ...]


@pytest.fixture(autouse=True)
def fresh_version_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    # version_label admits the first 8 versions a process sees: other tests' must not count.
    monkeypatch.setattr(versions, "_seen", {})


values = point_values


class Quality:
    """A QualityMonitor on in-memory telemetry, and what it exported."""

    def __init__(self, window_rows: int = 1000) -> None:
        self.reader = InMemoryMetricReader()
        self.telemetry = build_telemetry("unit", metric_readers=[self.reader], prometheus=False)
        self.monitor = QualityMonitor(self.telemetry, window_rows)

    def values(self, name: str) -> dict[Labels, float]:
        return values(self.reader, name)

    def kinds(self) -> dict[tuple[str, str], float]:
        """model_input_quality_total by (feature, kind), zeros left out."""
        return {
            (dict(k)["feature"], dict(k)["kind"]): v
            for k, v in self.values("model_input_quality_total").items()
            if v
        }

    def send(self, *rows: list[int] | tuple[int, ...], key: str | None = None) -> None:
        self.monitor.observe(list(rows), [(0, (0.8, 0.1, 0.1))] * len(rows), "1", key)


@pytest.fixture
def q() -> Iterator[Quality]:
    made = Quality()
    yield made
    made.telemetry.shutdown()


def with_age(age: int) -> list[int]:
    return [age, *GOOD[1:]]


RANGES = value_ranges(DATASET)  # age 14..73, the ordinal levels their whole scale
TRAINING = {"ranges": RANGES, "profiles": sorted({profile_digest(r) for r in DATASET})}


# --- CBPE -----------------------------------------------------------------------------------
# (predicted, probabilities) answered by version 1, and by hand: E[actual][predicted] is
#   actual Low:    1.2  0.1  0.2   (row sum 1.5)
#   actual Medium: 0.5  0.6  0.3   (1.4)
#   actual High:   0.3  0.3  1.5   (2.1)
#   column sums:   2.0  1.0  2.0
ANSWERS = [
    (0, (0.7, 0.2, 0.1)),
    (0, (0.5, 0.3, 0.2)),
    (1, (0.1, 0.6, 0.3)),
    (2, (0.2, 0.2, 0.6)),
    (2, (0.0, 0.1, 0.9)),
]
EXPECTED = {  # (predicted, actual) -> sum of P(actual) over the rows predicted so
    ("Low", "Low"): 1.2, ("Low", "Medium"): 0.5, ("Low", "High"): 0.3,
    ("Medium", "Low"): 0.1, ("Medium", "Medium"): 0.6, ("Medium", "High"): 0.3,
    ("High", "Low"): 0.2, ("High", "Medium"): 0.3, ("High", "High"): 1.5,
}  # fmt: skip


def expected_outcomes(q: Quality) -> dict[tuple[str, str, str, str], float]:
    out = {}
    for key, value in q.values("model_expected_outcomes_total").items():
        a = dict(key)
        assert set(a) == {"predicted", "actual", "correct", "model_version"}
        out[(a["model_version"], a["predicted"], a["actual"], a["correct"])] = value
    return out


def test_expected_outcomes_are_the_sums_of_p_actual_per_cell(q: Quality) -> None:
    q.monitor.observe([GOOD] * 5, ANSWERS, "1", None)
    q.monitor.observe([GOOD], [(1, (0.25, 0.5, 0.25))], "2", None)
    got = expected_outcomes(q)
    want = {("1", p, a, "true" if p == a else "false"): v for (p, a), v in EXPECTED.items()} | {
        ("2", "Medium", "Low", "false"): 0.25,
        ("2", "Medium", "Medium", "true"): 0.5,
        ("2", "Medium", "High", "false"): 0.25,
    }
    assert got == pytest.approx(want, abs=1e-12)
    # Every row adds exactly 1 (its probabilities), so the total is the rows answered.
    assert sum(got.values()) == pytest.approx(6)


def estimates(q: Quality, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for _, v in key): value for key, value in q.values(name).items()
    }  # keys sorted by label name: (class, model_version) or (model_version,)


def test_estimated_accuracy_recall_and_precision_by_hand(q: Quality) -> None:
    q.monitor.observe([GOOD] * 5, ANSWERS, "1", None)
    assert q.values("model_estimated_accuracy") == {}  # nothing computed yet
    q.monitor.compute(q.monitor.window)
    accuracy = estimates(q, "model_estimated_accuracy")
    # The mean of P(predicted): (0.7 + 0.5 + 0.6 + 0.6 + 0.9) / 5
    assert accuracy == pytest.approx({("1",): 3.3 / 5})
    assert estimates(q, "model_estimated_recall") == pytest.approx(
        {("Low", "1"): 1.2 / 1.5, ("Medium", "1"): 0.6 / 1.4, ("High", "1"): 1.5 / 2.1}
    )
    assert estimates(q, "model_estimated_precision") == pytest.approx(
        {("Low", "1"): 1.2 / 2.0, ("Medium", "1"): 0.6 / 1.0, ("High", "1"): 1.5 / 2.0}
    )


def test_estimates_are_per_version_and_over_the_last_window_rows_only() -> None:
    q = Quality(window_rows=5)
    try:
        q.monitor.observe([GOOD], [(2, (0.1, 0.1, 0.8))], "1", None)  # pushed out below
        q.monitor.observe([GOOD] * 4, ANSWERS[1:], "1", None)
        q.monitor.observe([GOOD], [(1, (0.3, 0.4, 0.3))], "2", None)
        assert len(q.monitor.window) == 5
        q.monitor.compute(list(q.monitor.window))
        assert estimates(q, "model_estimated_accuracy") == pytest.approx(
            {("1",): (0.6 + 0.6 + 0.9 + 0.5) / 4, ("2",): 0.4}
        )
        # Version 2 predicted Medium only: precision of Medium alone, recall of all three.
        assert estimates(q, "model_estimated_precision")[("Medium", "2")] == pytest.approx(0.4)
        assert ("Low", "2") not in estimates(q, "model_estimated_precision")
        assert estimates(q, "model_estimated_recall")[("Low", "2")] == pytest.approx(0.0)
        # The counter is not windowed: all six rows stay in it.
        assert sum(expected_outcomes(q).values()) == pytest.approx(6)
        q.monitor.compute([])
        assert q.values("model_estimated_accuracy") == {}
    finally:
        q.telemetry.shutdown()


# --- data quality ---------------------------------------------------------------------------
def test_range_kinds_are_counted_per_feature_only_with_training_ranges(q: Quality) -> None:
    q.send(with_age(1), with_age(120), with_age(80))
    assert q.kinds() == {}  # no reference yet
    q.monitor.set_reference({"counts": {}})  # an older reference: no ranges, no profiles
    q.send(with_age(1))
    assert q.kinds() == {}

    q.monitor.set_reference({"ranges": RANGES})
    q.send(with_age(1))  # below 14 and the accepted minimum
    assert q.kinds() == {("age", "outside_training_range"): 1, ("age", "at_range_edge"): 1}
    q.send(with_age(80), with_age(13))  # outside only
    q.send(with_age(14), with_age(73), GOOD)  # the training range's own ends: nothing
    q.send([33, 1, 8, 8, 8, 8, 7, 7, 7, 7, 8, 8, 9, 9, 9, 8, 9, 8, 8, 9, 7, 7, 7])
    q.send(with_age(120))
    assert q.kinds() == {("age", "outside_training_range"): 4, ("age", "at_range_edge"): 2}


def test_an_ordinal_level_outside_a_narrower_training_range_is_counted() -> None:
    q = Quality()
    try:
        ranges = {name: list(r) for name, r in RANGES.items()}
        ranges["smoking"] = [2, 7]
        q.monitor.set_reference({"ranges": ranges})
        smoking = FEATURE_NAMES.index("smoking")
        for level in (1, 2, 7, 8):
            row = list(GOOD)
            row[smoking] = level
            q.send(row)
        assert q.kinds() == {
            ("smoking", "outside_training_range"): 2,
            ("smoking", "at_range_edge"): 2,  # 1 and 8 are the accepted scale's ends
        }
    finally:
        q.telemetry.shutdown()


def test_unseen_profiles_only_with_training_profiles(q: Quality) -> None:
    q.send(with_age(34))
    q.monitor.set_reference({"ranges": RANGES})
    q.send(with_age(34))
    assert ("row", "unseen_profile") not in q.kinds()
    q.monitor.set_reference(TRAINING)
    q.send(*DATASET[:50])  # training rows: all known
    assert ("row", "unseen_profile") not in q.kinds()
    q.send(with_age(34), with_age(35), GOOD)
    assert q.kinds()[("row", "unseen_profile")] == 2


def repeated(q: Quality) -> float:
    return q.kinds().get(("row", "repeated_row"), 0)


def test_repeated_rows_are_consecutive_equal_rows_of_one_key(q: Quality) -> None:
    a, b = with_age(40), with_age(41)
    q.send(a, key=None)
    q.send(a, key=None)
    q.send(a, a, key=None)
    assert repeated(q) == 0  # no key, never compared
    q.send(a, key="clinic-1")
    q.send(a, key="clinic-2")  # the same row under another key
    assert repeated(q) == 0
    q.send(a, key="clinic-1")  # clinic-1's previous row, clinic-2's in between
    assert repeated(q) == 1
    q.send(b, key="clinic-1")
    q.send(a, key="clinic-1")  # equal to an earlier row, not to the previous one
    assert repeated(q) == 1
    q.send(b, b, a, a, key="clinic-2")  # within one batch too; clinic-2's last was a
    assert repeated(q) == 3
    q.send(a, key=None)
    assert repeated(q) == 3
    # No key at all counts no row of any kind but with a reference the others.
    assert set(q.kinds()) == {("row", "repeated_row")}


def test_the_key_memory_is_bounded_and_forgets_the_least_recent_key(
    q: Quality, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quality, "MAX_KEYS", 2)
    a = with_age(40)
    q.send(a, key="k1")
    q.send(a, key="k2")
    q.send(a, key="k1")  # repeated; k1 is now the most recent
    q.send(a, key="k3")  # forgets k2
    assert len(q.monitor._last_rows) == 2
    assert repeated(q) == 1
    q.send(a, key="k1")  # still remembered
    assert repeated(q) == 2
    q.send(a, key="k2")  # forgotten: a first row again (and forgets k3)
    assert repeated(q) == 2
    q.send(a, key="k3")
    assert repeated(q) == 2
    for index in range(100):
        q.send(a, key=f"many-{index}")
    assert len(q.monitor._last_rows) == 2


# --- feedback: Brier and calibration --------------------------------------------------------
def test_brier_is_the_sum_of_squared_differences_to_the_true_class() -> None:
    assert brier((0.7, 0.2, 0.1), 0) == pytest.approx(0.3**2 + 0.2**2 + 0.1**2)
    assert brier((0.7, 0.2, 0.1), 1) == pytest.approx(0.7**2 + 0.8**2 + 0.1**2)
    assert brier((0.7, 0.2, 0.1), 2) == pytest.approx(0.7**2 + 0.2**2 + 0.9**2)
    assert brier((1.0, 0.0, 0.0), 0) == 0.0 and brier((0.0, 0.0, 1.0), 0) == 2.0


@pytest.mark.parametrize(
    ("confidence", "bin_"),
    [(1 / 3, "0.3"), (0.3999, "0.3"), (0.4, "0.4"), (0.55, "0.5"), (0.6, "0.6"),
     (0.7, "0.7"), (0.8, "0.8"), (0.8999, "0.8"), (0.9, "0.9"), (0.97, "0.9"), (1.0, "0.9")],
)  # fmt: skip
def test_confidence_bins_by_lower_edge(confidence: float, bin_: str) -> None:
    assert confidence_bin(confidence) == bin_


def test_every_255th_falls_in_its_exact_decile() -> None:
    # What ids carry: k/255, whose decile is 10k // 255 in exact arithmetic.
    for k in range(85, 256):  # 85/255 = 1/3
        assert confidence_bin(k / 255) == BINS[min(10 * k // 255, 9) - 3], k


def test_feedback_counts_brier_scored_and_the_bin_of_the_confidence(q: Quality) -> None:
    q.monitor.record_feedback((0.7, 0.2, 0.1), 0, 1, "1")  # wrong, confidence 0.7
    q.monitor.record_feedback((0.25, 0.4, 0.35), 1, 1, "1")  # right, 0.4
    q.monitor.record_feedback((0.0, 0.0, 1.0), 2, 2, "2")  # right, 1.0 in the top bin
    assert q.values("model_feedback_scored_total") == {
        (("model_version", "1"),): 2,
        (("model_version", "2"),): 1,
    }
    assert q.values("model_feedback_brier_total") == pytest.approx(
        {
            (("model_version", "1"),): 1.14 + (0.25**2 + 0.6**2 + 0.35**2),
            (("model_version", "2"),): 0.0,
        }
    )
    assert q.values("model_feedback_calibration_total") == {
        (("bin", "0.7"), ("correct", "false"), ("model_version", "1")): 1,
        (("bin", "0.4"), ("correct", "true"), ("model_version", "1")): 1,
        (("bin", "0.9"), ("correct", "true"), ("model_version", "2")): 1,
    }
    assert q.values("model_feedback_confidence_total") == pytest.approx(
        {
            (("bin", "0.7"), ("model_version", "1")): 0.7,
            (("bin", "0.4"), ("model_version", "1")): 0.4,
            (("bin", "0.9"), ("model_version", "2")): 1.0,
        }
    )


def test_feedback_without_probabilities_counts_nothing(q: Quality) -> None:
    q.monitor.record_feedback(None, 0, 1, "1")
    for name in (
        "model_feedback_scored_total",
        "model_feedback_brier_total",
        "model_feedback_calibration_total",
        "model_feedback_confidence_total",
    ):
        assert q.values(name) == {}, name


def test_ece_from_the_counters_equals_ece_of_the_pairs(q: Quality) -> None:
    rng = random.Random(24)
    pairs: list[tuple[float, bool]] = []
    for _ in range(600):
        weights = [rng.random() ** 2 for _ in range(3)]
        probabilities = tuple(w / sum(weights) for w in weights)
        predicted = max(range(3), key=lambda k: probabilities[k])
        # Overconfident on purpose: the truth drawn from flatter probabilities.
        flat = [(p + 0.5) / 2.5 for p in probabilities]
        true_class = rng.choices(range(3), weights=flat)[0]
        q.monitor.record_feedback(probabilities, predicted, true_class, "1")  # type: ignore[arg-type]
        pairs.append((probabilities[predicted], predicted == true_class))

    # ECE directly: deciles by lower edge (the top one closed), |hits - confidence sum| / n.
    edges = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    hits, sums = [0] * 7, [0.0] * 7
    for confidence, correct in pairs:
        index = bisect.bisect_right(edges, confidence)
        hits[index] += correct
        sums[index] += confidence
    direct = sum(abs(h - s) for h, s in zip(hits, sums, strict=True)) / len(pairs)

    calibration = q.values("model_feedback_calibration_total")
    confidences = q.values("model_feedback_confidence_total")
    rows = q.values("model_feedback_scored_total")[(("model_version", "1"),)]
    assert rows == len(pairs) == sum(calibration.values())
    from_counters = (
        sum(
            abs(
                calibration.get((("bin", b), ("correct", "true"), ("model_version", "1")), 0)
                - confidences.get((("bin", b), ("model_version", "1")), 0.0)
            )
            for b in BINS
        )
        / rows
    )
    assert from_counters == pytest.approx(direct, rel=1e-9)
    assert direct > 0.05  # the overconfidence shows (so the comparison is not of zeros)
    brier_sum = q.values("model_feedback_brier_total")[(("model_version", "1"),)]
    assert 0 < brier_sum / rows < 2


# --- through the gateway --------------------------------------------------------------------
def test_predict_then_feedback_scores_the_ids_own_probabilities(gateway: App) -> None:
    answer = gateway.client.post("/predict", json={"features": GOOD}).json()
    assert answer["prediction_probabilities"] == [0.7, 0.2, 0.1]
    monitor = gateway.client.app.state.monitor  # type: ignore[attr-defined]
    carried = monitor.ids.verify(answer["prediction_id"]).probabilities
    sent = gateway.client.post(
        "/feedback", json={"prediction_id": answer["prediction_id"], "level": "Medium"}
    )
    assert sent.status_code == 200 and sent.json()["correct"] is False

    data = gateway.reader
    assert values(data, "model_feedback_scored_total") == {(("model_version", "7"),): 1}
    scored = values(data, "model_feedback_brier_total")[(("model_version", "7"),)]
    assert scored == pytest.approx(brier(carried, 1), rel=1e-12)
    # 0.49 + 0.64 + 0.01 unquantized; each 255th costs at most 2 * |p - y| / 255 per class.
    assert scored == pytest.approx(1.14, abs=4 / 255)
    calibration = values(data, "model_feedback_calibration_total")
    # Every bin's series exists (at 0 but this one) since the version first answered, so
    # increase() sees a new version's first labels.
    assert len(calibration) == 14 and sum(calibration.values()) == 1
    assert len(values(data, "model_feedback_confidence_total")) == 7
    (key,) = (k for k, v in calibration.items() if v)
    # 0.7 is carried as 178/255 (0.698): its bin is that of the carried confidence.
    assert carried[0] == 178 / 255 and confidence_bin(carried[0]) == "0.6"
    assert dict(key) == {
        "bin": confidence_bin(carried[0]),
        "correct": "false",
        "model_version": "7",
    }
    # The expected outcomes used the answered probabilities, unquantized.
    outcomes = values(data, "model_expected_outcomes_total")
    assert {dict(k)["actual"]: v for k, v in outcomes.items()} == pytest.approx(
        {"Low": 0.7, "Medium": 0.2, "High": 0.1}
    )
    assert {dict(k)["predicted"] for k in outcomes} == {"Low"}


def test_feedback_on_an_id_without_probabilities_is_accepted_and_not_scored(
    gateway: App,
) -> None:
    key = b"q" * 32
    monitor = gateway.client.app.state.monitor  # type: ignore[attr-defined]
    monitor.ids = PredictionIds(key)
    # Format 2 (before issue 24): predicted Low by version 7, no caller, no probabilities.
    body = struct.pack(">B8sIBH4s", 2, b"r" * 8, int(time.time()), 0, 7, bytes(4))
    token = (body + hmac.new(key, body, hashlib.sha256).digest()[:12]).hex()
    sent = gateway.client.post("/feedback", json={"prediction_id": token, "level": "Low"})
    assert sent.status_code == 200 and sent.json()["correct"] is True
    assert values(gateway.reader, "model_feedback_outcomes_total") == {
        (("actual", "Low"), ("correct", "true"), ("model_version", "7"), ("predicted", "Low")): 1
    }
    assert values(gateway.reader, "model_feedback_scored_total") == {}
    assert values(gateway.reader, "model_feedback_brier_total") == {}


def test_repeated_rows_through_the_gateway_follow_the_sticky_key(gateway: App) -> None:
    header = gateway.client.app.state.rollout.sticky_header  # type: ignore[attr-defined]
    for _ in range(3):  # no key (API keys off, no header): never compared
        gateway.client.post("/predict", json={"features": GOOD})
    for sticky in ("patient-1", "patient-1", "patient-2", "patient-1"):
        gateway.client.post("/predict", json={"features": GOOD}, headers={header: sticky})
    counted = values(gateway.reader, "model_input_quality_total")
    assert counted[(("feature", "row"), ("kind", "repeated_row"))] == 2


def test_quality_monitoring_off_skips_the_estimate_and_the_data_quality_counts() -> None:
    """LUNGWATCH_GATEWAY_QUALITY_MONITORING=false (the bench's measure of what they cost):
    answers, class counts and feedback scoring are unchanged; no CBPE, no data-quality kind."""
    reader = InMemoryMetricReader()
    telemetry = build_telemetry("lungwatch-gateway", metric_readers=[reader])
    settings = GatewaySettings(quality_monitoring=False)
    app = create_app(settings, telemetry=telemetry, model_client=ScriptedModelClient())  # type: ignore[arg-type]
    with TestClient(app) as client:
        header = app.state.rollout.sticky_header
        for _ in range(2):  # a repeated row, which monitoring on counts
            answer = client.post("/predict", json={"features": GOOD}, headers={header: "k"})
            assert answer.status_code == 200
        sent = client.post(
            "/feedback", json={"prediction_id": answer.json()["prediction_id"], "level": "Low"}
        )
        assert sent.status_code == 200
    assert sum(values(reader, "model_predictions_total").values()) == 2
    assert values(reader, "model_expected_outcomes_total") == {}
    assert sum(values(reader, "model_input_quality_total").values()) == 0
    assert values(reader, "model_feedback_scored_total") == {(("model_version", "7"),): 1}
    telemetry.shutdown()
