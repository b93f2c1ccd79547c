"""The span relay with its real child process: spans reach an OTLP receiver (HTTP and gRPC)
as the upstream exporter sends them, the exporter's metrics are counted in the serving
process with the error the child saw, and a dead child costs counted spans, not a hang."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

from contract.features import EXAMPLE_FEATURES
from devtools import procs
from devtools.procs import free_port
from telemetry import build_telemetry, span_relay
from tests.integration.conftest import Spawn, Stack
from tests.support.otlp import GrpcOtlpReceiver, OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


def _env(monkeypatch: pytest.MonkeyPatch, endpoint: str, protocol: str = "http/protobuf") -> None:
    """What the child reads; set after the telemetry is built, so that it has no OTLP
    exporters of its own in this test process."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")


class Relay:
    """A relay exporter on the resource and meter provider of one telemetry, whose spans
    are kept in memory to be exported by hand."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        telemetry = build_telemetry(
            "relay-test", span_exporter=self.memory, metric_readers=[self.reader], prometheus=False
        )
        self.tracer = telemetry.tracer("lungwatch.gateway")
        self.exporter = span_relay.SpanRelayExporter(
            telemetry.tracer_provider.resource, telemetry.meter_provider
        )

    def spans(self, n: int) -> list:
        """Real SDK spans, with links and attributes, finished and ready to export."""
        self.memory.clear()
        for i in range(n):
            with self.tracer.start_as_current_span("POST /predict", kind=SpanKind.SERVER) as server:
                server.set_attribute("http.route", "/predict")
                with self.tracer.start_as_current_span(
                    "model_server.batch",
                    links=[Link(server.get_span_context(), {"i": i})],
                    attributes={"lungwatch.batch.rows": i},
                ):
                    pass
        return list(self.memory.get_finished_spans())

    def exported(self) -> dict[str | None, int]:
        """otel_sdk_exporter_span_exported_total by error.type (None: exported)."""
        data = self.reader.get_metrics_data()
        out: dict[str | None, int] = {}
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == "otel_sdk_exporter_span_exported_total":
                        for point in metric.data.data_points:
                            error = (point.attributes or {}).get("error.type")
                            key = None if error is None else str(error)
                            out[key] = out.get(key, 0) + int(getattr(point, "value", 0))
        return out


@pytest.fixture
def relay(monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    made = Relay()
    yield made
    made.exporter.shutdown()


def _children() -> list[psutil.Process]:
    return [
        c for c in psutil.Process().children() if "telemetry.span_relay" in " ".join(c.cmdline())
    ]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_reach_the_receiver_as_the_upstream_exporter_sends_them(
    monkeypatch: pytest.MonkeyPatch, relay: Relay, protocol: str
) -> None:
    target = GrpcOtlpReceiver() if protocol == "grpc" else OtlpReceiver()
    target.start()
    try:
        endpoint = target.grpc_endpoint if isinstance(target, GrpcOtlpReceiver) else target.endpoint
        _env(monkeypatch, endpoint, protocol)
        spans = relay.spans(20)
        assert relay.exporter.export(spans) is SpanExportResult.SUCCESS
        assert relay.exporter.export(spans[:3]) is SpanExportResult.SUCCESS
        # byte for byte what the upstream encoder makes of the same spans in this process
        assert target.trace_requests[0].SerializeToString(deterministic=True) == encode_spans(
            spans
        ).SerializeToString(deterministic=True)
        assert len(target.spans()) == 43
        assert relay.exported() == {None: 43}
    finally:
        target.stop()


def test_the_child_starts_at_the_first_export_and_ends_at_shutdown(
    monkeypatch: pytest.MonkeyPatch, relay: Relay, receiver: OtlpReceiver
) -> None:
    _env(monkeypatch, receiver.endpoint)
    assert _children() == []  # nothing at start-up: cold start does not pay for it
    assert relay.exporter.export(relay.spans(1)) is SpanExportResult.SUCCESS
    (child,) = _children()
    relay.exporter.shutdown()
    assert child.wait(5) is not None or not child.is_running()
    assert relay.exporter.export(relay.spans(1)) is SpanExportResult.FAILURE  # after shutdown


def test_a_backend_that_is_down_is_counted_with_the_error_the_child_saw(
    monkeypatch: pytest.MonkeyPatch, relay: Relay
) -> None:
    _env(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0.5")
    started = time.monotonic()
    assert relay.exporter.export(relay.spans(5)) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 30  # bounded by the exporter's own deadline
    counts = relay.exported()
    assert counts.get(None, 0) == 0
    (error_type,) = [k for k in counts if k is not None]
    assert counts[error_type] == 10
    assert error_type not in ("SpanRelayError", "ExportFailed")  # the child's exporter's
    assert len(_children()) == 1  # a failed export does not cost the child


def test_a_dead_child_costs_counted_spans_then_a_new_child_exports(
    monkeypatch: pytest.MonkeyPatch, relay: Relay, receiver: OtlpReceiver
) -> None:
    _env(monkeypatch, receiver.endpoint)
    monkeypatch.setattr(span_relay, "RESPAWN_SECONDS", 0.5)
    spans = relay.spans(2)
    assert relay.exporter.export(spans) is SpanExportResult.SUCCESS
    (child,) = _children()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert relay.exporter.export(spans) is SpanExportResult.FAILURE  # lost, and counted
    assert relay.exporter.export(spans) is SpanExportResult.FAILURE  # not restarted yet
    time.sleep(0.6)
    assert relay.exporter.export(spans) is SpanExportResult.SUCCESS  # a new child
    assert relay.exported() == {None: 8, "SpanRelayError": 8}
    assert len(receiver.spans()) == 8
    (new_child,) = _children()
    assert new_child.pid != child.pid


def _relay_children(pid: int) -> list[psutil.Process]:
    return [
        c for c in psutil.Process(pid).children() if "telemetry.span_relay" in " ".join(c.cmdline())
    ]


def _exported_total(gateway_url: str) -> float:
    """otel_sdk_exporter_span_exported_total without error_type, from the gateway's /metrics."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("otel_sdk_exporter_span_exported_total{") and "error_type" not in line
    )


def test_a_real_gateway_exports_through_one_child_and_flushes_it_on_shutdown(
    integration_dir: Path, trained_model: procs.TrainedModel, spawn: Spawn
) -> None:
    receiver = OtlpReceiver().start()
    try:
        logs = integration_dir / "logs-relay"
        logs.mkdir(exist_ok=True)
        # a long schedule delay: the last spans leave only with the flush at shutdown
        otlp = {**procs.otlp_env(receiver.endpoint), "OTEL_BSP_SCHEDULE_DELAY": "60000"}
        model_server = spawn(procs.model_server(trained_model, logs, extra_env=otlp))
        gateway = spawn(procs.gateway(model_server.url, logs, extra_env=otlp))
        assert gateway.proc is not None
        answers = [
            httpx.post(f"{gateway.url}/predict", json={"features": EXAMPLE_FEATURES}, timeout=10)
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        trace_ids = {a.headers["x-trace-id"] for a in answers}
        assert _relay_children(gateway.proc.pid) == []  # nothing exported yet: no child
        assert "span_relay_process_" not in httpx.get(f"{gateway.url}/metrics", timeout=5).text
        gateway.stop()  # SIGTERM: the batch processor flushes through the relay
        gateway_spans = [s for s in receiver.spans() if s.service == "lungwatch-gateway"]
        for trace_id in trace_ids:
            names = {s.name for s in gateway_spans if s.trace_id == trace_id}
            assert {"POST /predict", "model_server.predict"} <= names, names
    finally:
        receiver.stop()


def test_the_gateway_counts_relayed_exports_and_has_one_child(stack: Stack) -> None:
    assert stack.gateway.proc is not None
    before = _exported_total(stack.gateway_url)
    answer = httpx.post(
        f"{stack.gateway_url}/predict", json={"features": EXAMPLE_FEATURES}, timeout=10
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 15
    while _exported_total(stack.gateway_url) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _exported_total(stack.gateway_url) > before
    (child,) = _relay_children(stack.gateway.proc.pid)
    # the child's own process metrics, beside the gateway's process_*
    text = httpx.get(f"{stack.gateway_url}/metrics", timeout=5).text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("span_relay_process_")
    )
    rss = float(samples["span_relay_process_resident_memory_bytes"])
    assert 0.5 < rss / child.memory_info().rss < 2
    assert float(samples["span_relay_process_cpu_seconds_total"]) > 0
    assert float(samples["span_relay_process_start_time_seconds"]) == pytest.approx(
        child.create_time(), abs=2
    )
    trace_id = answer.headers["x-trace-id"]
    deadline = time.monotonic() + 15
    while not stack.otlp.trace(trace_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(s.service == "lungwatch-gateway" for s in stack.otlp.trace(trace_id))


def test_ctrl_c_to_the_process_group_leaves_the_child_to_flush_the_last_spans(
    integration_dir: Path, trained_model: procs.TrainedModel, spawn: Spawn
) -> None:
    """`make run` and a terminal send Ctrl-C to every process of the group: the child must
    outlive it, or the gateway's final flush has nowhere to go."""
    receiver = OtlpReceiver().start()
    gateway: subprocess.Popen[bytes] | None = None
    try:
        logs = integration_dir / "logs-relay-sigint"
        logs.mkdir(exist_ok=True)
        model_server = spawn(
            procs.model_server(trained_model, logs, extra_env=procs.otlp_env(receiver.endpoint))
        )
        port = procs.free_port()
        # Two lone predictions are 4 gateway spans, one full batch: exported at once, which
        # starts the child. The third prediction's 2 spans wait (60 s delay) for the flush.
        env = procs.base_env(
            **{
                **procs.otlp_env(receiver.endpoint),
                "OTEL_BSP_SCHEDULE_DELAY": "60000",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
                "LUNGWATCH_GATEWAY_PORT": str(port),
                "LUNGWATCH_GATEWAY_MODEL_SERVER_URL": model_server.url,
                "OTEL_SERVICE_NAME": "lungwatch-gateway",
            }
        )
        with (logs / "gateway.log").open("ab") as log:
            gateway = subprocess.Popen(  # its own process group, as a terminal's job is
                [procs.PYTHON, "-m", "api"], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: _healthy(url), 30, "the gateway to answer /health")

        def predict() -> str:
            answer = httpx.post(f"{url}/predict", json={"features": EXAMPLE_FEATURES}, timeout=10)
            assert answer.status_code == 200
            return answer.headers["x-trace-id"]

        def gateway_spans(trace_id: str) -> set[str]:
            # the model server exports to the same receiver, under the same trace ids
            return {s.name for s in receiver.trace(trace_id) if s.service == "lungwatch-gateway"}

        first = [predict(), predict()]
        procs.wait_until(lambda: _relay_children(gateway.pid), 20, "the relay child")
        (child,) = _relay_children(gateway.pid)
        assert os.getsid(child.pid) != os.getsid(gateway.pid)  # out of the group's reach
        procs.wait_until(
            lambda: all(gateway_spans(t) for t in first), 20, "the first batch, relayed"
        )
        last = predict()
        assert not gateway_spans(last)  # still queued in the gateway
        os.killpg(gateway.pid, signal.SIGINT)
        assert gateway.wait(30) == 0
        assert gateway_spans(last) == {"POST /predict", "model_server.predict"}
        child.wait(10)  # and then the child is gone too
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
        receiver.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
