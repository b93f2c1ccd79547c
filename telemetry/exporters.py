"""Which exporters the standard OTEL_* variables ask for, per signal, and how to build them.

OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER: a comma-separated list of `otlp` (default),
`console` and `none` (`prometheus` is accepted for metrics: /metrics is always served).
OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` or
`http/protobuf` (the specification's default); `http/json` has no Python exporter and
falls back to `http/protobuf` with a warning. The exporters read their own endpoint,
headers, timeout and compression variables.

One deliberate difference from the specification's defaults: `otlp` is only active when an
endpoint variable is set, so a process run by hand or in a test does not retry a
Collector that is not there (the spec's default endpoint is localhost).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

log = logging.getLogger(__name__)

Signal = Literal["TRACES", "METRICS"]
GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
_KNOWN = {
    "TRACES": {"otlp", "console", "none"},
    "METRICS": {"otlp", "console", "none", "prometheus"},
}

# Loggers that report every failed batch or dropped span while a backend is down; the
# ReportingExporter logs the transitions instead and the SDK's metrics count the rest.
NOISY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
)


def exporter_names(signal: Signal) -> list[str]:
    """The exporters OTEL_<signal>_EXPORTER lists, in order; `none` alone means none."""
    raw = os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()] or ["otlp"]
    if "none" in names:
        return []
    known = [n for n in names if n in _KNOWN[signal]]
    for unknown in sorted(set(names) - set(known)):
        log.warning("OTEL_%s_EXPORTER=%s is not supported here; ignored", signal, unknown)
    return list(dict.fromkeys(known))


def otlp_endpoint_set(signal: Signal) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def otlp_wanted(signal: Signal) -> bool:
    return "otlp" in exporter_names(signal) and otlp_endpoint_set(signal)


def console_wanted(signal: Signal) -> bool:
    return "console" in exporter_names(signal)


def otlp_protocol(signal: Signal) -> str:
    """The per-signal variable wins over the general one (specification, OTLP exporter)."""
    raw = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or HTTP_PROTOBUF
    )
    protocol = raw.strip().lower()
    if protocol in (GRPC, HTTP_PROTOBUF):
        return protocol
    log.warning(
        "OTLP protocol %r is not available in Python; using %s for %s",
        raw,
        HTTP_PROTOBUF,
        signal.lower(),
    )
    return HTTP_PROTOBUF


def otlp_span_exporter(meter_provider: Any) -> Any:
    """The OTLP span exporter for the configured protocol; it counts its own exports
    (otel_sdk_exporter_span_*) on `meter_provider`."""
    if otlp_protocol("TRACES") == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(meter_provider=meter_provider)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(meter_provider=meter_provider)


def otlp_metric_exporter() -> Any:
    if otlp_protocol("METRICS") == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()
