"""OTLP span export from a child process, so that encoding spans costs the serving process
next to nothing.

Encoding a span to OTLP protobuf costs the OpenTelemetry Python SDK ~30 µs of CPU (quiet
machine; ~60 µs for a batch span with eight links), and it runs in the batch processor's
thread, holding the GIL the event loop needs: at 64 connections the gateway spent ~130 µs
of its ~1 ms per request encoding and posting spans (issue 11, profiled). Here the batch
processor hands its batch to `SpanRelayExporter`, which flattens each span to a tuple of
plain values and pickles the batch (~4 µs a span) to a child process,
`python -m telemetry.span_relay`, that rebuilds the spans and exports them with the
upstream OTLP exporter (HTTP or gRPC, from the same OTEL_EXPORTER_OTLP_* variables). The
encoding then runs on the other core.

What stays as it was: the batch processor and its bounded queue (OTEL_BSP_*, spans dropped
and counted when full) run in the serving process; so do the exporter's own metrics
(otel_sdk_exporter_span_*, with the error type the child's exporter saw), counted around
each relayed batch; an export waits for the child's answer, so a backend that is down slows
the export thread, never a request. The child is started at the first export (not at
start-up: cold start pays nothing) and again, at most every RESPAWN_SECONDS, after it died,
in a session of its own (signals to the serving process's group do not reach it); it exits
when its input closes, that is when the serving process shuts down or dies.

The encoded bytes are the ones the upstream exporter would send from the serving process:
tests/unit/test_span_relay.py compares them byte for byte.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

log = logging.getLogger(__name__)

# The child's start: imports and the exporter's set-up (~0.5 s on this machine, idle).
START_SECONDS = 30.0
# After the child died, exports fail (counted) until this long has passed; then one start.
RESPAWN_SECONDS = 5.0
# Beyond the exporter's own deadline (OTEL_EXPORTER_OTLP_TIMEOUT, retries included), how
# long an answer may take before the child is taken for hung and killed.
ANSWER_GRACE_SECONDS = 5.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

# --- spans as plain values -----------------------------------------------------------------
Context = tuple[int, int, bool, int, tuple[tuple[str, str], ...]]


def _context(context: SpanContext) -> Context:
    state = tuple(context.trace_state.items()) if context.trace_state else ()
    return (
        context.trace_id,
        context.span_id,
        context.is_remote,
        int(context.trace_flags),
        state,
    )


def _span_context(values: Context) -> SpanContext:
    trace_id, span_id, is_remote, flags, state = values
    return SpanContext(
        trace_id,
        span_id,
        is_remote=is_remote,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState(list(state)) if state else None,
    )


def _plain(attributes: Mapping[str, Any] | None, dropped: int = 0) -> tuple[Any, int]:
    return (dict(attributes) if attributes else None), dropped


def _bounded(attributes: dict[str, Any] | None, dropped: int) -> Any:
    """Attributes as the encoder reads them: a plain mapping, or BoundedAttributes when the
    SDK had dropped some (the encoder reports that count)."""
    if not dropped:
        return attributes
    bounded = BoundedAttributes(attributes=attributes or {})
    bounded.dropped = dropped
    return bounded


def flatten(span: ReadableSpan) -> tuple[Any, ...]:
    """Everything the OTLP encoder reads from a finished span, as picklable plain values."""
    scope = span.instrumentation_scope
    return (
        span.name,
        _context(span.context),
        _context(span.parent) if span.parent is not None else None,
        span.kind.value,
        span.start_time,
        span.end_time,
        _plain(span.attributes, span.dropped_attributes),
        tuple(
            (e.name, e.timestamp, _plain(e.attributes, e.dropped_attributes)) for e in span.events
        ),
        tuple(
            (_context(link.context), _plain(link.attributes, link.dropped_attributes))
            for link in span.links
        ),
        span.status.status_code.value,
        span.status.description,
        (scope.name, scope.version, scope.schema_url, _plain(scope.attributes)[0])
        if scope is not None
        else None,
        span.dropped_events,
        span.dropped_links,
    )


def _listed(items: list[Any], dropped: int) -> Any:
    if not dropped:
        return items
    bounded = BoundedList.from_seq(None, items)
    bounded.dropped = dropped
    return bounded


def rebuild(values: Sequence[Any], resource: Resource) -> ReadableSpan:
    """The span `flatten` took apart, with the serving process's resource."""
    (name, context, parent, kind, start, end, attributes, events, links, status_code,
     status_description, scope, dropped_events, dropped_links) = values  # fmt: skip
    return ReadableSpan(
        name=name,
        context=_span_context(context),
        parent=_span_context(parent) if parent is not None else None,
        resource=resource,
        attributes=_bounded(*attributes),
        events=_listed(
            [
                Event(e_name, _bounded(*e_attributes), e_time)
                for e_name, e_time, e_attributes in events
            ],  # fmt: skip
            dropped_events,
        ),
        links=_listed(
            [Link(_span_context(ctx), _bounded(*l_attributes)) for ctx, l_attributes in links],
            dropped_links,
        ),
        kind=SpanKind(kind),
        status=Status(StatusCode(status_code), status_description),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope(*scope) if scope is not None else None,
    )


# --- the serving process's side -------------------------------------------------------------
class SpanRelayError(Exception):
    """The child could not take the batch (not started, died, or did not answer in time)."""


# error.type of a failed export is the class name of the error the child's exporter saw;
# one class per name, made once (the names come from the exporter, a small fixed set).
_ERROR_TYPES: dict[str, type[Exception]] = {}


def _error_named(name: str) -> Exception:
    if name not in _ERROR_TYPES:
        _ERROR_TYPES[name] = type(name, (Exception,), {})
    return _ERROR_TYPES[name]()


def _export_deadline_seconds() -> float:
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT", "10"
    )
    try:
        return float(raw)
    except ValueError:
        return 10.0


class _Child:
    def __init__(self, resource: Resource) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "telemetry.span_relay"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # Its own session: a Ctrl-C or a SIGTERM sent to the serving process's group
            # (a terminal, `make run`) must not reach it, not even while it is still
            # importing, before main() can ignore them: the serving process's final flush
            # goes through it. Its lifetime is the pipe's.
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.to_child = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.from_child = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        try:
            self.to_child.send_bytes(pickle.dumps((dict(resource.attributes), resource.schema_url)))
            # The child answers once it has built its exporter: which one, where it sends.
            self.exporter = self.answer(START_SECONDS)
        except BaseException:
            self.process.kill()
            self.close(timeout=1.0)
            raise

    def answer(self, timeout: float) -> Any:
        if not self.from_child.poll(timeout):
            raise SpanRelayError(f"no answer from the span relay within {timeout:.0f} s")
        return pickle.loads(self.from_child.recv_bytes())

    def close(self, timeout: float) -> None:
        """Closing its input ends the child (after the batch it is on); kill if it lingers."""
        for connection in (self.to_child, self.from_child):
            connection.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class SpanRelayExporter(SpanExporter):
    """A SpanExporter for the batch processor: relays each batch to the child and returns
    what the child's OTLP exporter returned."""

    def __init__(self, resource: Resource, meter_provider: Any) -> None:
        self._resource = resource
        self._meter_provider = meter_provider
        self._child: _Child | None = None
        self._next_start = 0.0
        self._metrics: Any = None
        self._lock = threading.Lock()  # the export thread and shutdown
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._shutdown:
                return SpanExportResult.FAILURE
            records = [flatten(span) for span in spans]
            try:
                child = self._started()
            except SpanRelayError as exc:
                self._count_unsent(len(records), exc)
                return SpanExportResult.FAILURE
            # Counted as the upstream exporter counts one export (otel_sdk_exporter_span_*).
            with self._metrics.export_operation(len(records)) as counted:
                try:
                    child.to_child.send_bytes(pickle.dumps(records, pickle.HIGHEST_PROTOCOL))
                    ok, error_type, error_attributes = child.answer(
                        _export_deadline_seconds() + ANSWER_GRACE_SECONDS
                    )
                except (OSError, EOFError, SpanRelayError, pickle.PickleError) as exc:
                    self._lost(exc)
                    counted.error = exc if isinstance(exc, SpanRelayError) else SpanRelayError()
                    return SpanExportResult.FAILURE
                if not ok:
                    counted.error = _error_named(error_type)
                    counted.error_attrs = error_attributes
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    def _count_unsent(self, count: int, error: SpanRelayError) -> None:
        """A batch no child took. The metrics need the endpoint the first child reports:
        before any child started there is nothing to count on, as the upstream exporter
        has no metrics before it exists either."""
        if self._metrics is not None:
            with self._metrics.export_operation(count) as counted:
                counted.error = error

    def child_pid(self) -> int | None:
        """The running child's pid, for span_relay_process_* on /metrics; None without one."""
        child = self._child
        return child.process.pid if child is not None else None

    def _started(self) -> _Child:
        if self._child is not None:
            return self._child
        if time.monotonic() < self._next_start:
            raise SpanRelayError("span relay restarting")
        self._next_start = time.monotonic() + RESPAWN_SECONDS
        try:
            self._child = _Child(self._resource)
        except Exception as exc:
            raise SpanRelayError(f"span relay did not start: {exc}") from exc
        if self._metrics is None:
            self._metrics = self._exporter_metrics(*self._child.exporter)
        return self._child

    def _lost(self, exc: BaseException) -> None:
        """The child is dead or hung: stop it; a later export starts another."""
        if self._child is not None:
            log.warning(
                "span relay lost (%s); spans are dropped, and counted, until it restarts",
                type(exc).__name__,
                extra={"event": "span_relay_lost"},
            )
            child, self._child = self._child, None
            child.process.kill()
            child.close(timeout=1.0)

    def _exporter_metrics(self, component_type: str, endpoint: str) -> Any:
        """The upstream exporter's own metrics (otel_sdk_exporter_span_*), built with its
        helper so names and attributes are the ones it would record in this process."""
        # A private module of the pinned exporter: tests/integration/test_span_relay.py
        # reads the series it produces, so an upgrade that moves it fails there.
        from opentelemetry.exporter.otlp.common._exporter_metrics import create_exporter_metrics
        from opentelemetry.semconv._incubating.attributes.otel_attributes import (
            OtelComponentTypeValues,
        )

        enabled = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").lower()
        return create_exporter_metrics(
            OtelComponentTypeValues(component_type),
            "traces",
            endpoint,
            self._meter_provider,
            enabled.strip() == "true",
        )

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            if self._child is not None:
                self._child.close(timeout=_export_deadline_seconds() + ANSWER_GRACE_SECONDS)
                self._child = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # each export waits for the child's answer: nothing is held here


# --- the child ---------------------------------------------------------------------------------
class _Outcome:
    """Stands in for the exporter's own metrics in the child (the serving process counts)
    and keeps the error of the last export, which the serving process labels its count with."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.error_attributes: Any = None

    @contextmanager
    def export_operation(self, num_items: int) -> Any:
        from opentelemetry.exporter.otlp.common._exporter_metrics import ExportResult

        result = ExportResult()
        try:
            yield result
        finally:
            self.error, self.error_attributes = result.error, result.error_attrs


def main() -> None:
    # The serving process ends this one by closing its input, after its last flush; a
    # signal meant for the serving process must not cut that flush short (the child runs in
    # its own session already, so only a signal sent to its own pid gets here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from_parent = Connection(0, writable=False)
    to_parent = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answers
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.semconv._incubating.attributes.otel_attributes import (
        OtelComponentTypeValues,
    )

    from telemetry import exporters

    for noisy in exporters.NOISY_LOGGERS:  # the serving process reports failures
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    attributes, schema_url = pickle.loads(from_parent.recv_bytes())
    resource = Resource(attributes, schema_url)
    exporter = exporters.otlp_span_exporter(NoOpMeterProvider())
    outcome = _Outcome()
    exporter._metrics = outcome  # noqa: SLF001 (see _Outcome)
    grpc = exporters.otlp_protocol("TRACES") == exporters.GRPC
    component = (
        OtelComponentTypeValues.OTLP_GRPC_SPAN_EXPORTER
        if grpc
        else OtelComponentTypeValues.OTLP_HTTP_SPAN_EXPORTER
    )
    to_parent.send_bytes(pickle.dumps((component.value, str(exporter._endpoint))))  # noqa: SLF001
    while True:
        try:
            frame = from_parent.recv_bytes()
        except (EOFError, OSError):
            break
        spans = [rebuild(values, resource) for values in pickle.loads(frame)]
        outcome.error = outcome.error_attributes = None
        try:
            ok = exporter.export(spans) == SpanExportResult.SUCCESS
        except Exception as exc:  # an exporter bug must not end the relay
            ok, outcome.error = False, exc
        error = outcome.error
        attributes_of_error = dict(outcome.error_attributes or {}) or None
        to_parent.send_bytes(
            pickle.dumps(
                (
                    ok,
                    None if ok else type(error).__qualname__ if error else "ExportFailed",
                    attributes_of_error,
                )
            )
        )
    exporter.shutdown()


if __name__ == "__main__":
    main()
