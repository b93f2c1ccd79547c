"""In-test OTLP receivers (HTTP and gRPC): decode the protobuf the real exporters send."""

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


@dataclass(frozen=True)
class ReceivedMetric:
    service: str
    scope: str
    metric: Any  # opentelemetry.proto.metrics.v1.Metric

    @property
    def name(self) -> str:
        return str(self.metric.name)

    @property
    def unit(self) -> str:
        return str(self.metric.unit)

    @property
    def data_type(self) -> str:
        """gauge, sum, histogram, exponential_histogram or summary."""
        return str(self.metric.WhichOneof("data"))

    @property
    def monotonic(self) -> bool:
        return self.data_type == "sum" and bool(self.metric.sum.is_monotonic)

    def exemplars(self) -> list[tuple[str, str, float]]:
        """(trace id, span id, value) of every exemplar on this metric's histogram points."""
        if self.data_type != "histogram":
            return []
        return [
            (bytes(e.trace_id).hex(), bytes(e.span_id).hex(), float(e.as_double))
            for point in self.metric.histogram.data_points
            for e in point.exemplars
        ]


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
        self.arrivals: list[tuple[str, str]] = []  # (transport "http"/"grpc", signal)
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

    def _accept(self, path: str, body: bytes, transport: str = "http") -> None:
        with self._lock:
            self.raw_bodies.append(body)
            if path.endswith("/v1/traces"):
                self.trace_requests.append(ExportTraceServiceRequest.FromString(body))
                self.arrivals.append((transport, "traces"))
            elif path.endswith("/v1/metrics"):
                self.metric_requests.append(ExportMetricsServiceRequest.FromString(body))
                self.arrivals.append((transport, "metrics"))

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
        return {m.name for m in self.metrics()}

    def metrics(self) -> list[ReceivedMetric]:
        with self._lock:
            requests = list(self.metric_requests)
        return [
            ReceivedMetric(_service(rm.resource), sm.scope.name, metric)
            for request in requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]


class GrpcOtlpReceiver(OtlpReceiver):
    """The same store, fed by OTLP/gRPC (the exporters' `grpc` protocol) on its own port."""

    def __init__(self) -> None:
        super().__init__()
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceResponse,
        )
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's naming)
                receiver._accept("/v1/traces", request.SerializeToString(), "grpc")
                return ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                receiver._accept("/v1/metrics", request.SerializeToString(), "grpc")
                return ExportMetricsServiceResponse()

        self.grpc_port = free_port()
        self.grpc_endpoint = f"http://127.0.0.1:{self.grpc_port}"
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._grpc)
        self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")

    def start(self) -> GrpcOtlpReceiver:
        super().start()
        self._grpc.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None)
        super().stop()


def _service(resource: Any) -> str:
    return next((a.value.string_value for a in resource.attributes if a.key == "service.name"), "")


def _iter_spans(requests: list[ExportTraceServiceRequest]) -> Iterator[ReceivedSpan]:
    for request in requests:
        for rs in request.resource_spans:
            service = _service(rs.resource)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    yield ReceivedSpan(service, ss.scope.name, span)
