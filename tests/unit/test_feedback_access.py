"""Feedback bound to its source: only the key that predicted (or a feedback key), at a rate."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api.app import create_app
from api.feedback_store import KeyRateLimit
from api.guard import key_id
from contract.features import EXAMPLE_FEATURES
from contract.settings import GatewaySettings
from telemetry import build_telemetry
from tests.unit.conftest import App, ScriptedModelClient
from tests.unit.test_gateway import counter_values

GOOD = list(EXAMPLE_FEATURES)
CLIENT_A, CLIENT_B, LABELLER = "client-a-key", "client-b-key", "labelling-key"


@contextmanager
def build(**overrides: object) -> Iterator[App]:
    reader = InMemoryMetricReader()
    telemetry = build_telemetry("unit", metric_readers=[reader])
    model = ScriptedModelClient()
    settings = GatewaySettings(prediction_id_key="s" * 32, **overrides)  # type: ignore[arg-type]
    app = create_app(settings, telemetry=telemetry, model_client=model)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield App(client, model, telemetry, None, reader)  # type: ignore[arg-type]
    telemetry.shutdown()


@pytest.fixture
def keyed() -> Iterator[App]:
    with build(api_keys=f"{CLIENT_A},{CLIENT_B},{LABELLER}", feedback_api_keys=LABELLER) as app:
        yield app


def predict(app: App, key: str | None) -> str:
    headers = {"X-API-Key": key} if key else {}
    answer = app.client.post("/predict", json={"features": GOOD}, headers=headers)
    assert answer.status_code == 200, answer.text
    pid: str = answer.json()["prediction_id"]
    return pid


def feedback(
    app: App, key: str | None, prediction_id: str, level: str = "High"
) -> tuple[int, dict[str, Any]]:
    headers = {"X-API-Key": key} if key else {}
    answer = app.client.post(
        "/feedback", json={"prediction_id": prediction_id, "level": level}, headers=headers
    )
    return answer.status_code, {**answer.json(), "retry-after": answer.headers.get("retry-after")}


def results(app: App) -> dict[str, float]:
    return {
        dict(labels)["result"]: value
        for labels, value in counter_values(app, "model_feedback_total").items()
    }


def test_feedback_from_another_key_is_refused_and_counted(keyed: App) -> None:
    mine = predict(keyed, CLIENT_A)
    status, body = feedback(keyed, CLIENT_B, mine)
    assert status == 403 and body["error"] == "forbidden"
    assert "another API key" in body["message"]
    # The refusal neither counted as an outcome nor used up the prediction's one feedback.
    # (Its series exist, at 0, since this replica answered the version: see _prepare_version.)
    assert sum(counter_values(keyed, "model_feedback_outcomes_total").values()) == 0
    assert feedback(keyed, CLIENT_A, mine, "Low")[0] == 200
    assert feedback(keyed, CLIENT_B, mine)[0] == 403  # still not B's, answered or not
    assert results(keyed) == {"forbidden": 2, "accepted": 1}
    # Also a refused request for the gateway's accounting (api.observability), not traffic.
    refused = counter_values(keyed, "api_refused_requests_total")
    assert refused == {(("endpoint", "/feedback"), ("reason", "forbidden")): 2}
    monitor = keyed.client.app.state.monitor  # type: ignore[attr-defined]
    assert monitor.feedback.accuracy() == 1.0  # B's wrong "High" never reached it


def test_a_feedback_key_answers_any_prediction_once(keyed: App) -> None:
    theirs = predict(keyed, CLIENT_A)
    status, body = feedback(keyed, LABELLER, theirs, "Low")
    assert status == 200 and body["correct"] is True
    assert feedback(keyed, CLIENT_A, theirs)[0] == 409  # one feedback per prediction
    # The labeller may predict too; its own ids are bound to it like anyone's.
    own = predict(keyed, LABELLER)
    assert feedback(keyed, CLIENT_A, own)[0] == 403
    assert feedback(keyed, LABELLER, own)[0] == 200
    # An id bound to no key (issued with keys off): only a feedback key may answer it.
    monitor = keyed.client.app.state.monitor  # type: ignore[attr-defined]
    unbound = monitor.ids.issue(0, "7")
    assert feedback(keyed, CLIENT_A, unbound)[0] == 403
    assert feedback(keyed, LABELLER, unbound)[0] == 200
    assert results(keyed) == {"accepted": 3, "duplicate": 1, "forbidden": 2}


def test_with_own_predictions_off_only_feedback_keys_send_feedback() -> None:
    with build(
        api_keys=f"{CLIENT_A},{LABELLER}",
        feedback_api_keys=LABELLER,
        feedback_own_predictions=False,
    ) as app:
        mine = predict(app, CLIENT_A)
        status, body = feedback(app, CLIENT_A, mine)
        assert status == 403 and "only a feedback key" in body["message"]
        assert feedback(app, LABELLER, mine, "Low")[0] == 200
        assert results(app) == {"forbidden": 1, "accepted": 1}


def test_feedback_is_rate_limited_per_key_with_retry_after() -> None:
    # A rate so slow that no token comes back during the test: the burst is all there is.
    with build(
        api_keys=f"{CLIENT_A},{CLIENT_B}", feedback_rate_per_second=0.01, feedback_burst=3
    ) as app:
        ids = [predict(app, CLIENT_A) for _ in range(4)]
        assert [feedback(app, CLIENT_A, pid)[0] for pid in ids[:3]] == [200, 200, 200]
        status, body = feedback(app, CLIENT_A, ids[3])
        assert status == 429 and body["error"] == "rate_limited"
        assert body["retry-after"] == "100"  # one token at 0.01 a second
        # Every call spends a token, a forged id too; another key has its own bucket.
        assert feedback(app, CLIENT_B, "ab" * 32)[0] == 404
        assert results(app) == {"accepted": 3, "rate_limited": 1, "unknown_prediction": 1}
        refused = counter_values(app, "api_refused_requests_total")
        assert refused == {(("endpoint", "/feedback"), ("reason", "rate_limited")): 1}


def test_with_api_keys_off_feedback_is_open_and_unlimited() -> None:
    with build(feedback_rate_per_second=0.01, feedback_burst=1) as app:
        ids = [predict(app, None) for _ in range(3)]
        assert [feedback(app, None, pid)[0] for pid in ids] == [200, 200, 200]


def test_key_rate_limit_refills_at_its_rate() -> None:
    now = [0.0]
    limit = KeyRateLimit(rate=2, burst=2, clock=lambda: now[0])
    assert [limit.take("a"), limit.take("a"), limit.take("a")] == [0, 0, 1]
    assert limit.take("b") == 0  # per key
    now[0] = 0.5  # one token back at 2 a second
    assert limit.take("a") == 0 and limit.take("a") == 1
    now[0] = 100.0  # never more than the burst
    assert [limit.take("a") for _ in range(3)] == [0, 0, 1]


def test_feedback_keys_must_be_api_keys() -> None:
    with pytest.raises(ValueError, match="not in LUNGWATCH_GATEWAY_API_KEYS"):
        GatewaySettings(api_keys="a-key", feedback_api_keys="a-key,other-key")
    assert GatewaySettings(api_keys="a,b", feedback_api_keys=" b ").feedback_api_key_list == ["b"]
    assert key_id(CLIENT_A) != key_id(CLIENT_B)
