"""The circuit breaker's states and the request guard's refusals, without a network."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api.app import create_app
from api.circuit import CircuitBreaker, CircuitOpenError, State
from contract.features import EXAMPLE_FEATURES
from contract.settings import GatewaySettings
from telemetry import build_telemetry
from tests.unit.conftest import ScriptedModelClient
from tests.unit.test_gateway import counter_values

GOOD = list(EXAMPLE_FEATURES)
JSON = {"Content-Type": "application/json"}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_the_threshold_fails_fast_then_probes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_seconds=10, clock=clock)
    for _ in range(2):
        assert breaker.before_call() is False
        breaker.record_failure()
    assert breaker.state is State.CLOSED
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError) as refused:
        breaker.before_call()
    assert refused.value.retry_after == 10
    clock.now = 10.5
    assert breaker.before_call() is True  # the one probe
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # others still fail fast while it is out
    breaker.record_failure(probe=True)
    assert breaker.state is State.OPEN  # failed probe: open again, for a new cooldown
    clock.now = 21
    assert breaker.before_call() is True
    breaker.record_success(probe=True)
    assert breaker.state is State.CLOSED and breaker.before_call() is False


def test_success_resets_the_failure_run() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is State.CLOSED


def test_disabled_breaker_never_opens() -> None:
    breaker = CircuitBreaker(failure_threshold=0)
    for _ in range(100):
        breaker.record_failure()
    assert breaker.before_call() is False


@pytest.fixture
def guarded() -> tuple[TestClient, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    telemetry = build_telemetry("unit", metric_readers=[reader])
    settings = GatewaySettings(api_keys="key-one, key-two", max_body_bytes=4096)
    app = create_app(settings, telemetry=telemetry, model_client=ScriptedModelClient())  # type: ignore[arg-type]
    return TestClient(app), reader


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"Authorization": "Bearer key-two"}, 200),
        ({"X-API-Key": "key-one"}, 200),
        # Two headers that disagree are refused, whichever order they come in.
        ({"X-API-Key": "key-one", "Authorization": "Bearer key-two"}, 401),
        ({"Authorization": "Bearer key-two", "X-API-Key": "key-one"}, 401),
        ({"X-API-Key": "key-one", "Authorization": "Bearer key-one"}, 200),
    ],
)
def test_api_key_on_prediction_endpoints(guarded, headers: dict[str, str], status: int) -> None:  # type: ignore[no-untyped-def]
    client, _ = guarded
    response = client.post("/predict", json={"features": GOOD}, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"] == "unauthorized"
    assert client.get("/health").status_code == 200  # probes stay open
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"x" * 5000, JSON, 413, "payload_too_large"),
        (b'{"features": [1]}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"features": [1]}', {}, 415, "unsupported_media_type"),
        (b"[" * 4000, JSON, 400, "invalid_request"),
        (b'{"features": ' + b"[" * 200 + b"]" * 200 + b"}", JSON, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_hostile_bodies_get_a_clear_4xx(
    guarded, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:  # type: ignore[no-untyped-def]
    client, reader = guarded
    response = client.post("/predict", content=body, headers={**headers, "X-API-Key": "key-one"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    app = type("A", (), {"reader": reader})()
    failed = counter_values(app, "api_failed_requests_total")  # type: ignore[arg-type]
    total = counter_values(app, "api_total_requests_total")  # type: ignore[arg-type]
    refused = counter_values(app, "api_refused_requests_total")  # type: ignore[arg-type]
    if status in (413, 415):
        # Refused by the guard before admission: not traffic, counted apart by reason.
        assert refused == {(("endpoint", "/predict"), ("reason", code if status == 415 else "payload_too_large")): 1}  # fmt: skip
        assert failed == {} and total == {}
    else:
        # Admitted, then invalid: traffic, as invalid_request, so it burns no SLO budget.
        assert failed == {(("endpoint", "/predict"), ("reason", "invalid_request")): 1}
        assert total == {(("endpoint", "/predict"),): 1} and refused == {}


def test_chunked_body_over_the_limit_is_refused() -> None:
    telemetry = build_telemetry("unit")
    app = create_app(
        GatewaySettings(max_body_bytes=2048),
        telemetry=telemetry,
        model_client=ScriptedModelClient(),  # type: ignore[arg-type]
    )
    client = TestClient(app)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 1000

    response = client.post("/predict", content=chunks(), headers=JSON)
    assert response.status_code == 413


def test_metrics_can_live_on_a_separate_port() -> None:
    import httpx

    from devtools.procs import free_port

    port = free_port()
    telemetry = build_telemetry("unit")
    settings = GatewaySettings(metrics_port=port)
    app = create_app(settings, telemetry=telemetry, model_client=ScriptedModelClient())  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.post("/predict", json={"features": GOOD}).status_code == 200
        assert client.get("/metrics").status_code == 404  # not on the public API port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "api_total_requests_total" in text
