"""Model monitoring: feedback accuracy with bounded memory, drift low vs high, class counts."""

from __future__ import annotations

import random
import time

from api.monitoring import DriftWindow, FeedbackStore
from contract.drift import DRIFT_THRESHOLD, bin_counts
from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES
from model.dataset import load_dataset
from tests.unit.conftest import App
from tests.unit.test_gateway import counter_values

GOOD = list(EXAMPLE_FEATURES)


def test_feedback_accuracy_and_recall_over_a_sliding_window() -> None:
    store = FeedbackStore(window=4)
    outcomes = [(0, 0), (1, 1), (2, 1), (2, 2), (0, 2), (1, 1)]  # (predicted, true)
    assert [store.record(p, t) for p, t in outcomes] == [True, True, False, True, False, True]
    # The window keeps the last four: (2,1) (2,2) (0,2) (1,1): two right.
    assert store.size == 4 and store.accuracy() == 0.5
    assert store.recall(1) == 0.5 and store.recall(2) == 0.5 and store.recall(0) is None


def test_feedback_memory_is_bounded_under_a_long_stream() -> None:
    store = FeedbackStore(window=100)
    for index in range(20_000):
        store.record(index % 3, (index // 2) % 3)
    assert store.size == 100 and len(store._outcomes) == 100


def training_reference() -> tuple[dict[str, list[int]], list[list[int]]]:
    rows = load_dataset()[list(FEATURE_NAMES)].to_numpy().tolist()
    random.Random(3).shuffle(rows)
    return bin_counts(rows[:700]), rows[700:]


def test_drift_is_low_for_training_like_rows_and_high_for_shifted_ones() -> None:
    reference, held_out = training_reference()
    window = DriftWindow(size=300)
    window.references["1"] = reference
    window.add(held_out)
    window.compute()
    score = window.score("1")
    assert score is not None and score < 0.1, window.scores

    shifted = [[min(r[0] + 25, 120), *r[1:10], 8, 8, *r[12:]] for r in held_out]
    window.add(shifted)  # the window holds only the newest 300 rows
    window.compute()
    score = window.score("1")
    assert score is not None and score > DRIFT_THRESHOLD
    drifted = {name for name, psi in window.scores["1"].items() if psi > DRIFT_THRESHOLD}
    assert drifted == {"age", "smoking", "passive_smoker"}
    assert len(window.rows) == 300


def test_class_counter_sums_to_successful_rows_and_feedback_endpoint(gateway: App) -> None:
    answers = [gateway.client.post("/predict", json={"features": GOOD}).json() for _ in range(3)]
    batch = gateway.client.post("/predict/batch", json={"rows": [{"features": GOOD}] * 2}).json()
    assert counter_values(gateway, "model_predictions_total") == {
        (("class", "Low"), ("model_version", "7")): 5
    }

    first = answers[0]["prediction_id"]
    accepted = gateway.client.post("/feedback", json={"prediction_id": first, "level": "Low"})
    assert accepted.status_code == 200 and accepted.json()["correct"] is True
    wrong = batch["predictions"][0]["prediction_id"]
    assert (
        gateway.client.post("/feedback", json={"prediction_id": wrong, "level": 2}).json()[
            "correct"
        ]
        is False
    )
    again = gateway.client.post("/feedback", json={"prediction_id": first, "level": "Low"})
    assert again.status_code == 409 and again.json()["error"] == "duplicate"
    malformed = gateway.client.post("/feedback", json={"prediction_id": "abc123", "level": "Low"})
    assert malformed.status_code == 404 and malformed.json()["error"] == "unknown_prediction"
    assert "64 hex digits" in malformed.json()["message"]
    forged = first[:-1] + ("0" if first[-1] != "0" else "1")
    unknown = gateway.client.post("/feedback", json={"prediction_id": forged, "level": "Low"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_prediction"
    for bad in (
        {"prediction_id": first, "level": "Severe"},
        {"prediction_id": first, "level": True},
        {"level": 1},
    ):
        assert gateway.client.post("/feedback", json=bad).status_code == 422
    monitor = gateway.client.app.state.monitor  # type: ignore[attr-defined]
    assert monitor.feedback.accuracy() == 0.5
    outcomes = counter_values(gateway, "model_feedback_outcomes_total")
    # All nine cells of version 7 exist from its first answer (at 0 until a label comes), so
    # Prometheus' increase() counts a cell's first feedback.
    assert len(outcomes) == 9
    assert {k: v for k, v in outcomes.items() if v} == {
        (("actual", "Low"), ("correct", "true"), ("model_version", "7"), ("predicted", "Low")): 1,
        (("actual", "High"), ("correct", "false"), ("model_version", "7"), ("predicted", "Low")): 1,
    }
    assert counter_values(gateway, "model_feedback_total") == {
        (("result", "accepted"),): 2,
        (("result", "duplicate"),): 1,
        (("result", "unknown_prediction"),): 2,
    }
    # Feedback is not a prediction request: the contract counters did not move.
    assert sum(counter_values(gateway, "api_total_requests_total").values()) == 4


def test_drift_gauges_appear_off_the_request_path(gateway: App) -> None:
    for _ in range(20):
        gateway.client.post("/predict", json={"features": GOOD})
    deadline = time.monotonic() + 5
    monitor = gateway.client.app.state.monitor  # type: ignore[attr-defined]
    while not monitor.drift.scores and time.monotonic() < deadline:
        time.sleep(0.05)
    # 20 copies of one row against the whole dataset: a strong shift on every feature.
    (version,) = monitor.drift.scores
    assert monitor.drift.score(version) > DRIFT_THRESHOLD
    text = gateway.telemetry.prometheus_text().decode()
    assert 'model_feature_drift_psi{feature="age"' in text
    assert "model_drift_window_rows" in text
