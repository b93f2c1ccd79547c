"""The exporter and protocol names the standard OTEL_* variables take, as the specification says.

OTEL_EXPORTER_OTLP_PROTOCOL (and the per-signal OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL,
which win) choose `grpc` or `http/protobuf`; OTEL_{TRACES,METRICS}_EXPORTER take `otlp`,
`console` and `none`. Checked with the real exporters against in-test receivers of both
protocols: what arrives where is the proof, not which class was built.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from devtools.procs import REPO_ROOT, base_env, wait_until
from telemetry import build_telemetry, exporters
from tests.support.otlp import GrpcOtlpReceiver


@pytest.fixture
def receiver() -> Iterator[GrpcOtlpReceiver]:
    """One store fed by both an OTLP/HTTP and an OTLP/gRPC server, on two ports."""
    started = GrpcOtlpReceiver().start()
    yield started
    started.stop()


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")


def _send_one_span_and_metric(name: str) -> None:
    telemetry = build_telemetry("protocols", prometheus=False)
    with telemetry.tracer("protocols").start_as_current_span(name):
        telemetry.meter("protocols").create_counter(f"{name}_total").add(1)
    telemetry.shutdown()  # flushes both signals


def _paths(receiver: GrpcOtlpReceiver, via: str) -> set[str]:
    """Which signals arrived over `via` ("http" or "grpc")."""
    return {signal for transport, signal in receiver.arrivals if transport == via}


@pytest.mark.parametrize(
    ("general", "traces", "metrics", "traces_via", "metrics_via"),
    [
        (None, None, None, "http", "http"),  # the specification's default: http/protobuf
        ("http/protobuf", None, None, "http", "http"),
        ("grpc", None, None, "grpc", "grpc"),
        ("grpc", "http/protobuf", None, "http", "grpc"),  # per-signal wins
        ("http/protobuf", None, "grpc", "http", "grpc"),
        ("http/json", None, None, "http", "http"),  # no Python exporter: falls back
    ],
)
def test_protocol_variables_choose_the_transport(
    receiver: GrpcOtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    general: str | None,
    traces: str | None,
    metrics: str | None,
    traces_via: str,
    metrics_via: str,
) -> None:
    _clean_env(monkeypatch)
    for variable, value in (
        ("OTEL_EXPORTER_OTLP_PROTOCOL", general),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", traces),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", metrics),
    ):
        if value is not None:
            monkeypatch.setenv(variable, value)
    # Per-signal endpoints: an HTTP one is the full URL, a gRPC one host and port.
    endpoint = {"http": receiver.endpoint, "grpc": receiver.grpc_endpoint}
    http_path = {"traces": "/v1/traces", "metrics": "/v1/metrics"}
    for signal, via in (("traces", traces_via), ("metrics", metrics_via)):
        url = endpoint[via] + (http_path[signal] if via == "http" else "")
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", url)

    _send_one_span_and_metric("protocols")

    wait_until(
        lambda: (
            "traces" in _paths(receiver, traces_via) and "metrics" in _paths(receiver, metrics_via)
        ),
        10,
        f"traces over {traces_via} and metrics over {metrics_via}",
    )
    other = {"http": "grpc", "grpc": "http"}
    assert "traces" not in _paths(receiver, other[traces_via])
    assert "metrics" not in _paths(receiver, other[metrics_via])
    assert "protocols" in {s.name for s in receiver.spans()}


def test_general_endpoint_with_grpc(
    receiver: GrpcOtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual compose-style setting: one endpoint, one protocol, both signals."""
    _clean_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint)
    _send_one_span_and_metric("general")
    wait_until(lambda: _paths(receiver, "grpc") == {"traces", "metrics"}, 10, "both over gRPC")
    assert _paths(receiver, "http") == set()


def test_none_sends_nothing(receiver: GrpcOtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    _send_one_span_and_metric("silent")
    assert receiver.arrivals == []


def test_exporter_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console, otlp,zipkin")
    assert exporters.exporter_names("TRACES") == ["console", "otlp"]  # zipkin: warned, ignored
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    assert exporters.exporter_names("METRICS") == ["prometheus"]
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    assert exporters.exporter_names("TRACES") == ["otlp"]


@pytest.mark.parametrize("signal", ["TRACES", "METRICS"])
def test_console_exporter_prints(signal: str) -> None:
    """`console` for local debugging: a child process prints the span or metric on stdout."""
    script = (
        "from telemetry import build_telemetry\n"
        "t = build_telemetry('console-check', prometheus=False)\n"
        "with t.tracer('c').start_as_current_span('console-span'):\n"
        "    t.meter('c').create_counter('console_metric_total').add(1)\n"
        "t.shutdown()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env(**{f"OTEL_{signal}_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50"}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    expected = "console-span" if signal == "TRACES" else "console_metric_total"
    unexpected = "console_metric_total" if signal == "TRACES" else '"name": "console-span"'
    assert expected in done.stdout, done.stdout[-2000:]
    assert unexpected not in done.stdout
