"""An in-test OTLP/HTTP receiver: decodes the protobuf the real exporters send."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from devtools.procs import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    scope: str
    span: Any  # opentelemetry.proto.trace.v1.Span

    @property
    def trace_id(self) -> str:
        return bytes(self.span.trace_id).hex()

    @property
    def span_id(self) -> str:
        return bytes(self.span.span_id).hex()

    @property
    def parent_span_id(self) -> str:
        return bytes(self.span.parent_span_id).hex()

    @property
    def name(self) -> str:
        return str(self.span.name)

    @property
    def kind(self) -> int:
        return int(self.span.kind)

    def attributes(self) -> dict[str, Any]:
        return {a.key: _any_value(a.value) for a in self.span.attributes}


def _any_value(value: Any) -> Any:
    field = value.WhichOneof("value")
    if field == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, field) if field else None


class OtlpReceiver:
    """Accepts POST /v1/traces and /v1/metrics; keeps the raw and decoded requests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.raw_bodies: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._accept(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _accept(self, path: str, body: bytes) -> None:
        with self._lock:
            self.raw_bodies.append(body)
            if path.endswith("/v1/traces"):
                self.trace_requests.append(ExportTraceServiceRequest.FromString(body))
            elif path.endswith("/v1/metrics"):
                self.metric_requests.append(ExportMetricsServiceRequest.FromString(body))

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            requests = list(self.trace_requests)
        return list(_iter_spans(requests))

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def metric_names(self) -> set[str]:
        with self._lock:
            requests = list(self.metric_requests)
        return {
            metric.name
            for request in requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }


def _iter_spans(requests: list[ExportTraceServiceRequest]) -> Iterator[ReceivedSpan]:
    for request in requests:
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                "",
            )
            for ss in rs.scope_spans:
                for span in ss.spans:
                    yield ReceivedSpan(service, ss.scope.name, span)
