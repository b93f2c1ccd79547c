"""Builds the OpenTelemetry providers for one process (gateway or model server).

Configuration comes from the standard variables the SDK reads itself: OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_ENDPOINT (and the per-signal variants),
OTEL_EXPORTER_OTLP_PROTOCOL (and per signal: grpc or http/protobuf), OTEL_TRACES_SAMPLER(_ARG),
OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRICS_EXEMPLAR_FILTER (default trace_based: exemplars only
from sampled spans), OTEL_BSP_* queue limits, OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER
(otlp, console, none; see telemetry/exporters.py).
Tests inject in-memory span exporters and metric readers instead of patching globals.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry import metrics, trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest

from telemetry import exporters
from telemetry.exposition import ExemplarPrometheusReader, exposition
from telemetry.instruments import DROPPED_INSTRUMENTS, views

log = logging.getLogger(__name__)


def _process_defaults() -> None:
    """Defaults for this process's OTel libraries, set when telemetry is built (never at
    import), each overridable by the same variable in the environment."""
    # The FastAPI instrumentation reads this once, at first use: the stable HTTP
    # semantic conventions give `http_server_request_duration_seconds` in seconds.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    # The SDK's own health metrics (spans processed/dropped by the batch processor, exports
    # failed): with a backend down they show what is being dropped, on /metrics.
    os.environ.setdefault("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    # A down backend makes these log every failed batch or dropped span; ReportingExporter
    # logs the transitions instead (failing / recovered) and the SDK metrics count the rest.
    for noisy in exporters.NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


class ReportingExporter:
    """Wraps an OTLP exporter: logs once when exports start failing and once on recovery.

    Delegates everything else, so the SDK's processors and readers use it as the exporter.
    """

    def __init__(self, inner: Any, signal: str) -> None:
        self._inner = inner
        self._signal = signal
        self._healthy = True
        self._failed_batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._inner.export(batch, *args, **kwargs)
            ok = getattr(result, "name", "") == "SUCCESS"
        except Exception as exc:  # an exporter bug must not kill the export thread
            result, ok = None, False
            log.debug("exporter raised", exc_info=exc)
        if not ok:
            self._failed_batches += 1
            if self._healthy:
                self._healthy = False
                log.warning(
                    "OTLP %s export failing; telemetry is dropped (bounded) until the "
                    "backend answers. Predictions are not affected.",
                    self._signal,
                    extra={"event": f"otlp_{self._signal}_export_failing"},
                )
        elif not self._healthy:
            self._healthy = True
            log.info(
                "OTLP %s export recovered after %d failed batches",
                self._signal,
                self._failed_batches,
                extra={"event": f"otlp_{self._signal}_export_recovered"},
            )
            self._failed_batches = 0
        if result is None:
            from opentelemetry.sdk.metrics.export import MetricExportResult
            from opentelemetry.sdk.trace.export import SpanExportResult

            failure = SpanExportResult if self._signal == "traces" else MetricExportResult
            return failure.FAILURE
        return result


class _WithoutDropped(metrics.MeterProvider):
    """The provider, except that the instruments listed in DROPPED_INSTRUMENTS are no-ops.

    A View with DropAggregation drops them too, but only after the SDK has built, checked
    and hashed each measurement: the ASGI instrumentation records 4 of them per request
    (active requests up and down, request and response sizes), which cost more than the
    one histogram it is kept for. Here they cost a no-op call."""

    def __init__(self, provider: metrics.MeterProvider) -> None:
        self._provider = provider

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> metrics.Meter:
        # Duck-typed: it answers every Meter method, delegating all but three.
        return cast(
            metrics.Meter, _MeterWithoutDropped(self._provider.get_meter(name, *args, **kwargs))
        )


class _MeterWithoutDropped:
    def __init__(self, meter: metrics.Meter) -> None:
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)

    def create_histogram(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in DROPPED_INSTRUMENTS:
            return metrics.NoOpHistogram(name)
        return self._meter.create_histogram(name, *args, **kwargs)

    def create_up_down_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in DROPPED_INSTRUMENTS:
            return metrics.NoOpUpDownCounter(name)
        return self._meter.create_up_down_counter(name, *args, **kwargs)

    def create_counter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in DROPPED_INSTRUMENTS:
            return metrics.NoOpCounter(name)
        return self._meter.create_counter(name, *args, **kwargs)


@dataclass
class Telemetry:
    """The providers of one process plus the registry its own /metrics serves."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def instrument_fastapi(self, app: Any, excluded_urls: str, http_metrics: bool = True) -> None:
        """SERVER spans (joining the caller's W3C trace) and HTTP server metrics for an app.

        Probes and scrapes are excluded so they neither flood traces nor skew latency.
        `http_metrics=False` keeps the spans but records none of the instrumentation's
        metrics: for an app that times its requests itself (the gateway's
        endpoint_request_time_seconds), where they would be a second copy paid per request.
        """
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.tracer_provider,
            meter_provider=(
                _WithoutDropped(self.meter_provider) if http_metrics else NoOpMeterProvider()
            ),
            # The per-message "http receive/send" spans add cost and no insight here.
            exclude_spans=["receive", "send"],
            excluded_urls=excluded_urls,
        )

    def prometheus_text(self) -> bytes:
        """The classic text format (what a scraper gets without asking for OpenMetrics)."""
        return generate_latest(self.registry)

    def exposition(self, accept_header: str | None) -> tuple[bytes, str]:
        """/metrics for a scraper: OpenMetrics with exemplars when its Accept header asks
        for it (Prometheus does with exemplar storage on), else the classic text format.
        Returns (body, content type)."""
        return exposition(self.registry, accept_header)

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
    span_export_process: bool = False,
) -> Telemetry:
    """Providers for one process: /metrics always, OTLP and console when the env asks.

    `span_exporter` and `metric_readers` are for tests (in-memory); spans given to an
    injected exporter are handed over synchronously so a test sees them at once.
    `span_export_process`: OTLP spans are encoded and sent by a child process
    (telemetry/span_relay.py), off this process's core and GIL.
    """
    _process_defaults()
    service_name = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    # service.instance.id lets the Collector set a distinct `instance` per process.
    resource = Resource.create(
        {"service.name": service_name, "service.instance.id": str(uuid.uuid4())}
    )

    registry = CollectorRegistry(auto_describe=True)
    # process_* (RSS, CPU seconds, open fds) for the System dashboard, and python_gc_*
    # (collections and objects collected per generation: what the collector costs, see
    # contract/server.py): the SDK has no process metrics of its own. Direct scrape only;
    # compose keeps them from that job.
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    readers: list[MetricReader] = list(metric_readers)
    if prometheus:
        readers.append(ExemplarPrometheusReader(registry))
    if exporters.otlp_wanted("METRICS"):
        # Interval from OTEL_METRIC_EXPORT_INTERVAL (default 60 s); exported off-thread.
        readers.append(
            PeriodicExportingMetricReader(
                ReportingExporter(exporters.otlp_metric_exporter(), "metrics")  # type: ignore[arg-type]
            )
        )
    if exporters.console_wanted("METRICS"):
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    # The exemplar filter and reservoirs are the SDK's (OTEL_METRICS_EXEMPLAR_FILTER); the
    # views name the libraries' instruments for Prometheus and drop the unread ones.
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=views())

    # Sampler: None lets the SDK read OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    tracer_provider = TracerProvider(resource=resource)
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if exporters.otlp_wanted("TRACES"):
        # The batch processor exports from its own thread and its queue is bounded
        # (OTEL_BSP_MAX_QUEUE_SIZE, 2048): with the backend down or silent, spans are
        # dropped and counted, never queued without limit, and no request waits on them.
        if span_export_process:
            # imported here: the child runs `python -m telemetry.span_relay`
            from telemetry.span_relay import SpanRelayExporter

            relay = SpanRelayExporter(resource, meter_provider)
            # The child's memory and CPU, beside the gateway's own process_*: it is ~40 MB
            # and ~0.1 core at saturation that process_* of the gateway does not show.
            # Without a child the pid names no process and the collector reports nothing.
            ProcessCollector(
                namespace="span_relay",
                pid=lambda: relay.child_pid() or "no-child",
                registry=registry,
            )
            otlp: Any = relay
        else:
            otlp = exporters.otlp_span_exporter(meter_provider)
        exporter = ReportingExporter(otlp, "traces")
        tracer_provider.add_span_processor(
            BatchSpanProcessor(exporter, meter_provider=meter_provider)  # type: ignore[arg-type]
        )
    if exporters.console_wanted("TRACES"):
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # Batched too: a request never waits on stdout.
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))

    return Telemetry(
        service_name=service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        registry=registry,
    )
