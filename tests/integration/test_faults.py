"""Faults provoked against the real gateway and the real model server: every request gets a
prediction or a clear error, within its deadline, and the accounting holds."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES
from devtools import procs
from tests.integration.conftest import Spawn, Stack
from tests.support.faultproxy import FaultProxy

BODY = {"features": list(EXAMPLE_FEATURES)}
SERVER, CLIENT = 2, 3


@pytest.fixture
def proxy(stack: Stack) -> Iterator[FaultProxy]:
    upstream = int(stack.model_server_url.rsplit(":", 1)[1])
    fault_proxy = FaultProxy(upstream).start()
    yield fault_proxy
    fault_proxy.stop()


def gateway_via(proxy: FaultProxy, stack: Stack, spawn: Spawn, **env: str) -> procs.ManagedProcess:
    settings = {
        "LUNGWATCH_GATEWAY_MODEL_SERVER_TIMEOUT_SECONDS": "1.0",
        "LUNGWATCH_GATEWAY_CIRCUIT_FAILURE_THRESHOLD": "0",
        **procs.otlp_env(stack.otlp.endpoint),
        **env,
    }
    return spawn(procs.gateway(proxy.url, stack.workdir / "logs", extra_env=settings))


def metric_sum(gateway_url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{gateway_url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def timed_post(url: str, body: object = BODY, timeout: float = 30) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}/predict", json=body, timeout=timeout)
    return response, time.monotonic() - started


def test_slow_model_server_is_a_504_at_the_deadline_and_the_trace_shows_where(
    stack: Stack, spawn: Spawn, proxy: FaultProxy
) -> None:
    gateway = gateway_via(proxy, stack, spawn)
    proxy.set("delay", delay=2.5)
    response, elapsed = timed_post(gateway.url)
    assert response.status_code == 504
    assert response.json()["error"] == "model_timeout"
    assert "within 1s" in response.json()["message"]
    assert 1.0 <= elapsed < 2.5, f"answered after {elapsed:.2f}s, deadline 1s"

    trace_id = response.headers["x-trace-id"]

    def spans() -> list:
        found = stack.otlp.trace(trace_id)
        kinds = {(s.service, s.kind) for s in found}
        wanted = {
            ("lungwatch-gateway", SERVER),  # ends last, after the response
            ("lungwatch-gateway", CLIENT),
            ("lungwatch-model-server", SERVER),
        }
        return found if wanted <= kinds else []

    found = procs.wait_until(spans, 15, "the slow request's spans")
    client = next(s for s in found if s.service == "lungwatch-gateway" and s.kind == CLIENT)
    model = next(s for s in found if s.service == "lungwatch-model-server" and s.kind == SERVER)
    client_ms = (client.span.end_time_unix_nano - client.span.start_time_unix_nano) / 1e6
    model_ms = (model.span.end_time_unix_nano - model.span.start_time_unix_nano) / 1e6
    # The gateway waited its full deadline; the model server itself was quick: the time
    # went between them (here, the injected network delay).
    assert client_ms >= 950 and model_ms < client_ms / 2
    call = next(s for s in found if s.name == "model_server.predict")
    assert call.span.status.code == 2  # STATUS_CODE_ERROR
    assert call.attributes()["lungwatch.failure_reason"] == "model_timeout"
    assert metric_sum(gateway.url, "api_failed_requests_total", reason="model_timeout") == 1


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (200, b"<html>not json</html>", "invalid JSON"),
        (200, b'{"result": "ok"}', "returned none predictions for 1 rows"),
        (200, b'{"probabilities": [[0.5, 0.5]]}', "not 3 probabilities"),
        (200, b'{"probabilities": [[0.9, 0.9, 0.9]]}', "invalid probabilities"),
        (500, b'{"error_code": "INTERNAL_ERROR"}', "HTTP 500"),
    ],
)  # fmt: skip
def test_garbage_from_the_model_server_is_a_502_never_a_prediction(
    stack: Stack, spawn: Spawn, proxy: FaultProxy, status: int, body: bytes, words: str
) -> None:
    gateway = gateway_via(proxy, stack, spawn)
    proxy.respond(status, body)
    response, _ = timed_post(gateway.url)
    assert response.status_code == 502
    assert response.json()["error"] == "model_bad_response"
    assert words in response.json()["message"]
    assert "prediction" not in response.json()
    assert metric_sum(gateway.url, "api_failed_requests_total", reason="model_bad_response") == 1
    proxy.set("pass")
    assert timed_post(gateway.url)[0].status_code == 200  # and it recovers by itself


def test_connection_reset_and_black_hole_give_503_and_504(
    stack: Stack, spawn: Spawn, proxy: FaultProxy
) -> None:
    gateway = gateway_via(proxy, stack, spawn)
    proxy.set("reset")
    response, _ = timed_post(gateway.url)
    assert response.status_code == 503 and "Retry-After" in response.headers
    proxy.set("blackhole")
    response, elapsed = timed_post(gateway.url)
    assert response.status_code == 504 and elapsed < 2.5


def test_circuit_breaker_fails_fast_then_probes_and_recovers(
    stack: Stack, spawn: Spawn, proxy: FaultProxy
) -> None:
    gateway = gateway_via(
        proxy,
        stack,
        spawn,
        LUNGWATCH_GATEWAY_CIRCUIT_FAILURE_THRESHOLD="3",
        LUNGWATCH_GATEWAY_CIRCUIT_RESET_SECONDS="2",
    )
    proxy.set("blackhole")
    for _ in range(3):
        assert timed_post(gateway.url)[0].status_code == 504  # each waits the 1 s deadline
    response, elapsed = timed_post(gateway.url)
    assert response.status_code == 503 and response.json()["error"] == "circuit_open"
    assert elapsed < 0.5, f"an open circuit should answer at once, took {elapsed:.2f}s"
    assert 1 <= int(response.headers["Retry-After"]) <= 2

    proxy.set("pass")  # the model server is back; the circuit still needs its probe
    procs.wait_until(
        lambda: timed_post(gateway.url)[0].status_code == 200, 10, "the half-open probe to pass"
    )
    assert all(timed_post(gateway.url)[0].status_code == 200 for _ in range(3))
    assert metric_sum(gateway.url, "api_failed_requests_total", reason="circuit_open") >= 1
    total = metric_sum(gateway.url, "api_total_requests_total")
    ok = metric_sum(gateway.url, "api_successful_requests_total")
    failed = metric_sum(gateway.url, "api_failed_requests_total")
    assert total == ok + failed


def test_in_flight_limit_answers_503_at_once_and_counts_it(
    stack: Stack, spawn: Spawn, proxy: FaultProxy
) -> None:
    gateway = gateway_via(
        proxy,
        stack,
        spawn,
        LUNGWATCH_GATEWAY_MAX_IN_FLIGHT="2",
        LUNGWATCH_GATEWAY_MODEL_SERVER_TIMEOUT_SECONDS="5",
    )
    proxy.set("delay", delay=1.5)
    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(timed_post, gateway.url) for _ in range(2)]
        time.sleep(0.5)  # both are now waiting on the slow model server
        rejected = [pool.submit(timed_post, gateway.url) for _ in range(5)]
        results = [f.result() for f in rejected]
        assert [f.result()[0].status_code for f in slow] == [200, 200]
    for response, elapsed in results:
        assert response.status_code == 503 and response.json()["error"] == "overloaded"
        assert elapsed < 1.0  # refused at once, not queued behind the slow ones
    assert metric_sum(gateway.url, "api_failed_requests_total", reason="overloaded") == 5


def test_sigterm_finishes_in_flight_requests_flushes_spans_and_exits_0(
    stack: Stack, spawn: Spawn, proxy: FaultProxy
) -> None:
    gateway = gateway_via(proxy, stack, spawn, LUNGWATCH_GATEWAY_MODEL_SERVER_TIMEOUT_SECONDS="5")
    proxy.set("delay", delay=1.5)
    result: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: result.append(timed_post(gateway.url)[0]))
    sender.start()
    time.sleep(0.5)
    gateway.signal(signal.SIGTERM)
    sender.join(10)
    assert result and result[0].status_code == 200, "the in-flight request was not finished"
    assert gateway.proc is not None and gateway.proc.wait(15) == 0
    trace_id = result[0].json()["trace_id"]
    procs.wait_until(
        lambda: any(s.service == "lungwatch-gateway" for s in stack.otlp.trace(trace_id)),
        5,
        "the last request's gateway span, flushed at shutdown",
    )
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{gateway.url}/predict", json=BODY, timeout=2)


def test_model_server_sigterm_finishes_its_in_flight_call_and_exits_0(
    stack: Stack, spawn: Spawn
) -> None:
    model_server = spawn(procs.model_server(stack.model, stack.workdir / "logs"))
    rows = [list(EXAMPLE_FEATURES)] * 40_000  # a call that takes a while to parse and score
    payload = {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": rows}}
    result: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: result.append(
            httpx.post(f"{model_server.url}/invocations", json=payload, timeout=60)
        )
    )
    sender.start()
    time.sleep(0.3)
    model_server.signal(signal.SIGTERM)
    sender.join(60)
    assert result and result[0].status_code == 200
    assert len(result[0].json()["predictions"]) == len(rows)
    assert model_server.proc is not None and model_server.proc.wait(15) == 0


@pytest.mark.parametrize("backend", ["refused", "blackhole"])
def test_telemetry_backend_down_never_slows_or_fails_predictions(
    stack: Stack, spawn: Spawn, backend: str
) -> None:
    sink = FaultProxy(upstream_port=None).start()
    try:
        sink.set("blackhole")
        endpoint = sink.url if backend == "blackhole" else f"http://127.0.0.1:{procs.free_port()}"
        gateway = spawn(
            procs.gateway(
                stack.model_server_url,
                stack.workdir / "logs",
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_BSP_MAX_QUEUE_SIZE="20",
                OTEL_BSP_MAX_EXPORT_BATCH_SIZE="5",
                OTEL_BSP_SCHEDULE_DELAY="100",
                OTEL_METRIC_EXPORT_INTERVAL="500",
            )
        )
        latencies = []
        for _ in range(60):
            response, elapsed = timed_post(gateway.url)
            assert response.status_code == 200
            latencies.append(elapsed)
        # A request that waited on the exporter would take its 10 s timeout.
        assert max(latencies) < 2.0, f"slowest prediction {max(latencies):.2f}s"
        dropped = procs.wait_until(
            lambda: metric_sum(
                gateway.url, "otel_sdk_processor_span_processed_total", error_type="queue_full"
            ),
            15,
            "the dropped-span count on /metrics",
        )
        assert dropped > 0
        assert metric_sum(gateway.url, "otel_sdk_processor_span_queue_size") <= 20  # bounded
        if backend == "refused":
            procs.wait_until(
                lambda: "otlp_traces_export_failing" in gateway.log_text(), 20, "the failing log"
            )
        log = gateway.log_text()
        # Said once, not per request or per batch.
        assert log.count("otlp_traces_export_failing") <= 1
        assert "Queue full" not in log
    finally:
        sink.stop()


def test_no_patient_value_reaches_spans_logs_or_labels(stack: Stack, spawn: Spawn) -> None:
    """Distinctive values go in; nothing exported may contain them."""
    gateway = spawn(
        procs.gateway(
            stack.model_server_url,
            stack.workdir / "logs",
            extra_env=procs.otlp_env(stack.otlp.endpoint),
        )
    )
    # Age 97 and an unusual profile; the invalid one carries a marker string too.
    secret_row = [97, 2, 7, 8, 1, 8, 7, 1, 7, 1, 8, 1, 9, 1, 9, 1, 9, 1, 8, 1, 7, 1, 7]
    marker = "PATIENT-MARKER-4242"
    trace_ids = [
        httpx.post(f"{gateway.url}/predict", json={"features": secret_row}).headers["x-trace-id"],
        httpx.post(
            f"{gateway.url}/predict",
            json={"patient": dict(zip(FEATURE_NAMES, secret_row, strict=True))},
        ).headers["x-trace-id"],
        httpx.post(f"{gateway.url}/predict", json={"features": [marker, *secret_row[1:]]}).headers[
            "x-trace-id"
        ],
        httpx.post(
            f"{gateway.url}/predict/batch", json={"rows": [{"features": secret_row}] * 2}
        ).headers["x-trace-id"],
    ]

    def server_span_ended(trace_id: str) -> bool:
        # The gateway's SERVER span ends last: once it is exported, the trace is complete.
        return any(
            s.service == "lungwatch-gateway" and s.kind == SERVER
            for s in stack.otlp.trace(trace_id)
        )

    spans = procs.wait_until(
        lambda: (
            [s for t in trace_ids for s in stack.otlp.trace(t)]
            if all(server_span_ended(t) for t in trace_ids)
            else []
        ),
        15,
        "the spans of the four requests",
    )
    row_text = ",".join(map(str, secret_row))
    for span in spans:
        values = [str(v) for v in span.attributes().values()]
        values += [str(a.value) for event in span.span.events for a in event.attributes]
        values += [event.name for event in span.span.events]
        for value in values:
            assert marker not in value and row_text not in value.replace(" ", ""), span.name
            assert "97" not in re.findall(r"\d+", value) or "port" in value, (span.name, value)
    logs = gateway.log_text() + Path(stack.model_server.log_path).read_text()
    assert marker not in logs and row_text not in logs.replace(" ", "")
    assert '"age"' not in logs and "air_pollution" not in logs
    metrics = httpx.get(f"{gateway.url}/metrics").text
    labels = " ".join(re.findall(r"\{([^}]*)\}", metrics))
    assert marker not in labels and "97" not in re.findall(r'"(\d+)"', labels)
