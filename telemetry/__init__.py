"""Builds the OpenTelemetry providers for one process (gateway or model server).

Configuration comes from the standard variables the SDK reads itself: OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_ENDPOINT (and the per-signal variants),
OTEL_TRACES_SAMPLER(_ARG), OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRICS_EXEMPLAR_FILTER,
OTEL_BSP_* queue limits, OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER ("none" turns OTLP off).
Tests inject in-memory span exporters and metric readers instead of patching globals.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from prometheus_client import CollectorRegistry, generate_latest

# The FastAPI/httpx instrumentations read this once, at first use: the stable HTTP
# semantic conventions give `http_server_request_duration_seconds` in seconds.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")

log = logging.getLogger(__name__)


def _otlp_wanted(signal: str) -> bool:
    """True when the standard env vars ask for OTLP export of this signal."""
    exporter = os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


@dataclass
class Telemetry:
    """The providers of one process plus the registry its own /metrics serves."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    otlp_traces: bool = False
    otlp_metrics: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Flush what is buffered (bounded by the exporters' own timeouts), then stop."""
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.shutdown()
            except Exception:  # telemetry must never fail the process on exit
                log.warning("telemetry shutdown failed", exc_info=True)


def build_telemetry(
    default_service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metric_readers: Sequence[MetricReader] = (),
    prometheus: bool = True,
) -> Telemetry:
    """Providers for one process: Prometheus text always, OTLP when the env asks for it.

    `span_exporter` and `metric_readers` are for tests (in-memory); spans given to an
    injected exporter are handed over synchronously so a test sees them at once.
    """
    service_name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    # service.instance.id lets the Collector set a distinct `instance` per process.
    resource = Resource.create(
        {"service.name": service_name, "service.instance.id": str(uuid.uuid4())}
    )

    # Sampler: None lets the SDK read OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    tracer_provider = TracerProvider(resource=resource)
    otlp_traces = False
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if _otlp_wanted("TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The batch processor's queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE, 2048): when the
        # backend is down spans are dropped, never queued without limit or waited for.
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        otlp_traces = True

    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = list(metric_readers)
    if prometheus:
        readers.append(PrometheusMetricReader(registry=registry))
    otlp_metrics = False
    if _otlp_wanted("METRICS"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        # Interval from OTEL_METRIC_EXPORT_INTERVAL (default 60 s); exported off-thread.
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        otlp_metrics = True
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    return Telemetry(
        service_name=service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        registry=registry,
        otlp_traces=otlp_traces,
        otlp_metrics=otlp_metrics,
    )
