"""The foundation, end to end against real processes: answers, metrics in Prometheus, traces."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES, LABELS
from contract.wire import ROWS_PATH
from devtools import procs
from model.dataset import load_dataset
from telemetry.instruments import CONTRACT, Kind
from tests.integration.conftest import Spawn, Stack

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind

_TAIL = "4, 5, 4, 3, 2, 2, 4, 3, 2, 2, 4, 3, 4, 2, 2, 3, 1, 2, 3"
INVALID_BODIES: list[tuple[str, bytes]] = [
    ("wrong count", b'{"features": [1, 2, 3]}'),
    ("non-numeric", f'{{"features": [33, 1, "two", {_TAIL}, 4]}}'.encode()),
    ("out of range", f'{{"features": [33, 1, 2, {_TAIL}, 99]}}'.encode()),
    ("NaN", f'{{"features": [NaN, 1, 2, {_TAIL}, 4]}}'.encode()),
    ("boolean", b'{"patient": {"age": true}}'),
    ("malformed JSON", b'{"features": [33, 1,'),
    ("empty body", b""),
]


def dataset_rows(n: int) -> list[list[int]]:
    frame = load_dataset().drop_duplicates(subset=list(FEATURE_NAMES))
    rows = frame[list(FEATURE_NAMES)].head(n).to_numpy().tolist()
    return [[int(v) for v in row] for row in rows]


def post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)


def test_predictions_equal_the_models_offline_predictions(stack: Stack) -> None:
    import mlflow

    rows = dataset_rows(30)
    mlflow.set_tracking_uri(stack.model.tracking_uri)
    offline = mlflow.pyfunc.load_model(stack.model.model_uri).predict(
        __import__("pandas").DataFrame(rows, columns=list(FEATURE_NAMES))
    )

    single = [
        httpx.post(f"{stack.gateway_url}/predict", json={"features": row}, timeout=10).json()
        for row in rows[:15]
    ] + [
        httpx.post(
            f"{stack.gateway_url}/predict",
            json={"patient": dict(zip(FEATURE_NAMES, row, strict=True))},
            timeout=10,
        ).json()
        for row in rows[15:]
    ]
    batch = httpx.post(
        f"{stack.gateway_url}/predict/batch",
        json={"rows": [{"features": row} for row in rows]},
        timeout=10,
    ).json()["predictions"]

    for answers in (single, batch):
        assert len(answers) == len(rows)
        for answer, (_, expected) in zip(answers, offline.iterrows(), strict=True):
            assert answer["prediction"] == expected["prediction"]
            assert answer["label"] == LABELS[expected["prediction"]]
            probabilities = [expected["prob_low"], expected["prob_medium"], expected["prob_high"]]
            assert answer["prediction_probabilities"] == pytest.approx(probabilities, abs=1e-12)
            assert answer["confidence"] == pytest.approx(max(probabilities), abs=1e-12)
    assert {a["model_version"] for a in single} == {stack.model.version}


def test_response_shape_of_the_readme_example(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/predict", json={"features": list(EXAMPLE_FEATURES)}, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert body["prediction"] == 0 and body["label"] == "Low"
    assert set(body) >= {
        "prediction", "label", "prediction_probabilities", "confidence", "model_version",
        "trace_id", "latency_seconds", "prediction_id",
    }  # fmt: skip
    assert len(body["trace_id"]) == 32 and int(body["trace_id"], 16) != 0
    assert response.headers["x-trace-id"] == body["trace_id"]
    assert 0 < body["latency_seconds"] < 10


def test_contract_metrics_reach_prometheus_with_exact_counts(
    stack: Stack, spawn: Spawn, integration_dir: Path
) -> None:
    """A gateway of its own, so N valid + M invalid are the only requests it ever saw."""
    workdir = integration_dir / "contract"
    gateway = spawn(procs.gateway(stack.model_server_url, workdir.parent / "logs"))
    gateway_hostport = gateway.url.removeprefix("http://")
    prometheus = spawn(procs.prometheus(workdir, {"lungwatch-gateway": [gateway_hostport]}))

    rows = dataset_rows(10)
    for row in rows[:8]:
        assert httpx.post(f"{gateway.url}/predict", json={"features": row}).status_code == 200
    batch = {"rows": [{"features": row} for row in rows[8:]]}
    assert httpx.post(f"{gateway.url}/predict/batch", json=batch).status_code == 200
    for what, body in INVALID_BODIES:
        response = post(f"{gateway.url}/predict", body)
        assert response.status_code == 422, what
    n_valid, n_invalid = 9, len(INVALID_BODIES)

    since = time.time()
    procs.wait_until(
        lambda: procs.scraped_since(prometheus.url, "lungwatch-gateway", since),
        20,
        "a scrape of the gateway after the traffic",
    )
    names = set(httpx.get(f"{prometheus.url}/api/v1/label/__name__/values").json()["data"])
    for spec in CONTRACT:
        expected = spec.name + ("_bucket" if spec.kind is Kind.HISTOGRAM else "")
        assert expected in names, f"{spec.name} is missing from Prometheus"
    value = lambda expr: procs.prom_value(prometheus.url, expr)  # noqa: E731
    assert value("sum(api_total_requests_total)") == n_valid + n_invalid
    assert value("sum(api_successful_requests_total)") == n_valid
    assert value("sum(api_failed_requests_total)") == n_invalid
    assert value('sum(api_failed_requests_total{reason="invalid_request"})') == n_invalid
    assert value('sum(endpoint_request_time_seconds_count{endpoint="/predict"})') == 15
    assert value("sum(api_response_latency_seconds_count)") == 9
    assert value("api_prediction_result") in (0, 1, 2)
    assert 0 < (value("api_prediction_confidence") or 0) <= 1
    assert 0 <= (value("system_cpu_usage") or -1) <= 100
    assert 0 < (value("system_ram_usage") or 0) <= 100


def test_one_trace_spans_gateway_client_and_model_server(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/predict", json={"features": list(EXAMPLE_FEATURES)}, timeout=10
    )
    trace_id = response.json()["trace_id"]

    def complete() -> list:
        # The gateway's SERVER span ends last (after the response): wait for every span.
        spans = stack.otlp.trace(trace_id)
        kinds = {(s.service, s.kind) for s in spans}
        wanted = {
            ("lungwatch-gateway", SERVER),
            ("lungwatch-gateway", CLIENT),
            ("lungwatch-model-server", SERVER),
        }
        done = wanted <= kinds and any(s.name == "model.predict" for s in spans)
        return spans if done else []

    spans = procs.wait_until(complete, 15, f"all spans of trace {trace_id} at the receiver")
    gateway_server = [s for s in spans if s.service == "lungwatch-gateway" and s.kind == SERVER]
    gateway_client = [s for s in spans if s.service == "lungwatch-gateway" and s.kind == CLIENT]
    model_server = [s for s in spans if s.service == "lungwatch-model-server" and s.kind == SERVER]
    assert len(gateway_server) == 1 and gateway_server[0].name == "POST /predict"
    assert len(gateway_client) == 1
    assert len(model_server) == 1 and model_server[0].name == f"POST {ROWS_PATH}"
    # The model server's span is the child of the gateway's httpx call: W3C context flowed.
    assert model_server[0].parent_span_id == gateway_client[0].span_id
    assert gateway_client[0].parent_span_id != ""
    inference = [s for s in spans if s.name == "model.predict"]
    assert inference[0].attributes()["lungwatch.batch.rows"] == 1


def test_model_server_metrics_reach_prometheus(stack: Stack) -> None:
    httpx.post(f"{stack.gateway_url}/predict", json={"features": list(EXAMPLE_FEATURES)})
    stack.wait_for_scrape("lungwatch-model-server")
    count = procs.prom_value(
        stack.prometheus_url, 'sum(model_inference_seconds_count{outcome="ok"})'
    )
    assert count is not None and count >= 1
    # model_info names the served model; its labels change with the version served.
    info = procs.prom_query(stack.prometheus_url, "model_info")
    assert [series["metric"]["model_version"] for series in info] == [stack.model.version]
    assert info[0]["metric"]["run_id"] == stack.model.run_id
    assert info[0]["metric"]["model_name"] == "lungwatch-risk"


def test_model_server_down_gives_fast_503_and_not_ready_then_recovers(
    stack: Stack, spawn: Spawn, integration_dir: Path
) -> None:
    logs = integration_dir / "logs"
    port = procs.free_port()
    model_server = spawn(procs.model_server(stack.model, logs, port=port))
    timeout = 2.0
    gateway = spawn(
        procs.gateway(
            model_server.url,
            logs,
            LUNGWATCH_GATEWAY_MODEL_SERVER_TIMEOUT_SECONDS=str(timeout),
            LUNGWATCH_GATEWAY_READY_CACHE_SECONDS="0",
        )
    )
    body = {"features": list(EXAMPLE_FEATURES)}
    assert httpx.get(f"{gateway.url}/ready").status_code == 200
    assert httpx.post(f"{gateway.url}/predict", json=body).status_code == 200

    model_server.stop()
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/predict", json=body, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"] == "model_unavailable"
    assert "unreachable" in response.json()["message"]
    assert "Retry-After" in response.headers
    assert elapsed < timeout, f"the 503 took {elapsed:.2f}s, beyond the {timeout}s deadline"
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"

    model_server.start()  # same port: the gateway recovers without a restart
    procs.wait_until(
        lambda: httpx.get(f"{gateway.url}/ready").status_code == 200, 30, "gateway ready again"
    )
    assert httpx.post(f"{gateway.url}/predict", json=body).status_code == 200
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'reason="model_unavailable"' in text


def test_a_new_registered_version_is_served_and_reported_without_a_gateway_restart(
    spawn: Spawn, integration_dir: Path
) -> None:
    """Retrain (version 2 takes the alias), restart the model server on the same port: the
    same gateway answers with version 2 and model_info follows."""
    workdir = integration_dir / "versions"
    logs = integration_dir / "logs"
    first = procs.train_model(workdir, "--classifier", "logreg")
    port = procs.free_port()
    model_server = spawn(procs.model_server(first, logs, port=port))
    gateway = spawn(procs.gateway(model_server.url, logs))
    body = {"features": list(EXAMPLE_FEATURES)}
    assert httpx.post(f"{gateway.url}/predict", json=body).json()["model_version"] == "1"

    second = procs.train_model(workdir)
    assert second.version == "2"
    model_server.stop()
    model_server.start()
    assert httpx.post(f"{gateway.url}/predict", json=body).json()["model_version"] == "2"
    info = [
        line
        for line in httpx.get(f"{model_server.url}/metrics").text.splitlines()
        if line.startswith("model_info{")
    ]
    assert len(info) == 1 and 'model_version="2"' in info[0] and second.run_id in info[0]
    assert httpx.get(f"{gateway.url}/ready").json()["model"]["version"] == "2"
