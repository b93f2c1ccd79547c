"""Response shapes, error mapping and accounting of the gateway, with in-memory telemetry."""

from __future__ import annotations

import pytest

from api.model_client import ModelBadResponse, ModelTimeout, ModelUnavailable
from contract.features import EXAMPLE_FEATURES
from tests.support.metric_reader import point_values
from tests.unit.conftest import App

GOOD = list(EXAMPLE_FEATURES)


def counter_values(app: App, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return point_values(app.reader, name)


def test_predict_response_shape(gateway: App) -> None:
    body = gateway.client.post("/predict", json={"features": GOOD}).json()
    assert body["prediction"] == 0 and body["label"] == "Low"
    assert body["prediction_probabilities"] == [0.7, 0.2, 0.1]
    assert body["confidence"] == 0.7
    assert body["model_version"] == "7"
    assert len(body["trace_id"]) == 32 and len(body["prediction_id"]) == 64
    assert body["latency_seconds"] >= 0


def test_batch_returns_one_result_per_row_with_distinct_ids(gateway: App) -> None:
    body = gateway.client.post("/predict/batch", json={"rows": [{"features": GOOD}] * 3}).json()
    assert len(body["predictions"]) == 3
    assert len({p["prediction_id"] for p in body["predictions"]}) == 3
    assert gateway.model.calls == [[GOOD] * 3]  # one model call for the whole batch


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (ModelUnavailable("down"), 503, "model_unavailable"),
        (ModelTimeout("slow"), 504, "model_timeout"),
        (ModelBadResponse("garbage"), 502, "model_bad_response"),
    ],
)
def test_model_faults_map_to_clear_errors_and_are_counted(
    gateway: App, error: Exception, status: int, reason: str
) -> None:
    gateway.model.error = error  # type: ignore[assignment]
    response = gateway.client.post("/predict", json={"features": GOOD})
    assert response.status_code == status
    assert response.json() == {"error": reason, "message": str(error)}
    assert ("Retry-After" in response.headers) == (status == 503)
    failed = counter_values(gateway, "api_failed_requests_total")
    assert failed == {(("endpoint", "/predict"), ("reason", reason)): 1}
    assert counter_values(gateway, "api_successful_requests_total") == {}


def test_every_prediction_request_is_counted_once(gateway: App) -> None:
    gateway.client.post("/predict", json={"features": GOOD})
    gateway.client.post("/predict", json={"features": GOOD[:3]})
    gateway.client.post("/predict/batch", json={"rows": [{"features": GOOD}]})
    gateway.client.get("/health")
    total = counter_values(gateway, "api_total_requests_total")
    assert total == {(("endpoint", "/predict"),): 2, (("endpoint", "/predict/batch"),): 1}
    ok = counter_values(gateway, "api_successful_requests_total")
    assert ok == {(("endpoint", "/predict"),): 1, (("endpoint", "/predict/batch"),): 1}
    failed = counter_values(gateway, "api_failed_requests_total")
    assert failed == {(("endpoint", "/predict"), ("reason", "invalid_request")): 1}


def test_unhandled_error_is_a_json_500_and_counted(gateway: App) -> None:
    gateway.model.error = RuntimeError("boom")  # type: ignore[assignment]
    from fastapi.testclient import TestClient

    client = TestClient(gateway.client.app, raise_server_exceptions=False)
    response = client.post("/predict", json={"features": GOOD})
    assert response.status_code == 500
    assert response.json()["error"] == "internal"
    assert "boom" not in response.text  # internals stay in the log
    failed = counter_values(gateway, "api_failed_requests_total")
    assert failed == {(("endpoint", "/predict"), ("reason", "internal")): 1}


def test_server_span_and_trace_header(gateway: App) -> None:
    response = gateway.client.post("/predict", json={"features": GOOD})
    spans = gateway.spans.get_finished_spans()
    server = [s for s in spans if s.name == "POST /predict"]
    assert len(server) == 1
    trace_id = format(server[0].context.trace_id, "032x")
    assert response.json()["trace_id"] == trace_id == response.headers["x-trace-id"]


def test_health_ready_and_docs(gateway: App) -> None:
    assert gateway.client.get("/health").json() == {"status": "ok"}
    assert gateway.client.get("/ready").status_code == 200
    gateway.model.error = ModelUnavailable("down")
    # the readiness answer is cached for a second; a fresh app would see 503 at once
    schema = gateway.client.get("/openapi.json").json()
    request_schema = schema["components"]["schemas"]["PredictRequest"]
    assert request_schema["examples"][0]["features"] == GOOD
    assert gateway.client.get("/docs").status_code == 200
