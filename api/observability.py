"""The gateway's instruments and the ASGI middleware that accounts for every request.

The middleware, not the route, owns the accounting: every POST to a prediction endpoint is
counted in api_total_requests_total when it is admitted (api.guard calls `admit` once the
API key, content type and size passed) and in exactly one of successful/failed when it
ends, whatever happened in between (validation error, model fault, unhandled exception).
A request the guard refuses (401, 413, 415) is not traffic: it is counted only in
api_refused_requests_total, so anonymous refusals cannot keep NoTraffic quiet or dilute
the SLO. Every label value comes from a fixed set, whatever the caller sends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import psutil
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry import Telemetry
from telemetry import instruments as ins

PREDICTION_ENDPOINTS = frozenset({"/predict", "/predict/batch"})
GUARDED_ENDPOINTS = PREDICTION_ENDPOINTS | {"/feedback"}
FAILURE_REASON = "lungwatch.failure_reason"  # key in the ASGI scope state set by handlers
STARTED_AT = "lungwatch.started_at"
ADMITTED = "lungwatch.admitted"  # set by GatewayMetrics.admit

# RFC 9110's methods (and PATCH): anything else a client makes up shares one label value,
# as the OpenTelemetry HTTP instrumentations do, so a caller cannot mint series.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "_OTHER"
# Statuses that refuse a request rather than serve it; the reason label is fixed per status.
REFUSALS = {
    401: "unauthorized",
    403: "forbidden",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
# Probes and scrapes: neither traced (api.app) nor logged, so they do not drown either.
PROBE_PREFIXES = ("/health", "/ready", "/metrics")
# Longest path written whole into an access log line; the rest is summarized by its length.
MAX_LOGGED_PATH = 256

access_log = logging.getLogger("lungwatch.access")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm_fd: tuple[int, int | None] | None = None  # (pid that opened it, descriptor)


def _statm() -> int | None:
    """This process's /proc/self/statm, opened once per process (a forked child opens its
    own: /proc/self resolves when opened); None where there is no /proc."""
    global _statm_fd
    pid = os.getpid()
    if _statm_fd is None or _statm_fd[0] != pid:
        try:
            _statm_fd = (pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            _statm_fd = (pid, None)
    return _statm_fd[1]


def reason_for_status(status: int) -> str:
    if status < 500:
        return "invalid_request"
    return {502: "model_bad_response", 503: "model_unavailable", 504: "model_timeout"}.get(
        status, "internal"
    )


class GatewayMetrics:
    """Creates every gateway instrument declared in telemetry.instruments."""

    def __init__(self, telemetry: Telemetry) -> None:
        meter = telemetry.meter("lungwatch.gateway")
        self.prediction_result = ins.create(meter, ins.PREDICTION_RESULT)
        self.prediction_confidence = ins.create(meter, ins.PREDICTION_CONFIDENCE)
        self.total = ins.create(meter, ins.TOTAL_REQUESTS)
        self.successful = ins.create(meter, ins.SUCCESSFUL_REQUESTS)
        self.failed = ins.create(meter, ins.FAILED_REQUESTS)
        self.endpoint_time = ins.create(meter, ins.ENDPOINT_REQUEST_TIME)
        self.memory_per_request = ins.create(meter, ins.MEMORY_PER_REQUEST)
        self.refused = ins.create(meter, ins.REFUSED_REQUESTS)
        self._process = psutil.Process()
        # cpu_percent(None) compares with the previous call: prime it so the first
        # scrape reports a real figure. Both callbacks run at collection, never per request.
        psutil.cpu_percent(None)
        ins.create(meter, ins.SYSTEM_CPU, callbacks=[self._cpu])
        ins.create(meter, ins.SYSTEM_RAM, callbacks=[self._ram])

    @staticmethod
    def _cpu(options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(psutil.cpu_percent(None))

    @staticmethod
    def _ram(options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(psutil.virtual_memory().percent)

    def rss(self) -> int:
        """Resident set size in bytes, read twice per prediction request.

        psutil opens /proc/self/statm on every call (34 µs measured); a descriptor opened
        once and read with pread costs 3 µs and reads the same number."""
        statm = _statm()
        if statm is None:
            return int(self._process.memory_info().rss)
        return int(os.pread(statm, 64, 0).split()[1]) * _PAGE_SIZE

    def admit(self, scope: Scope) -> None:
        """Called by the guard once a request passed its checks: from here on it is traffic."""
        scope.setdefault("state", {})[ADMITTED] = True
        path = scope["path"]
        if scope["method"] == "POST" and path in PREDICTION_ENDPOINTS:
            self.total.add(1, _ENDPOINT_ATTRIBUTES[path])

    def record_prediction(self, prediction: int, confidence: float) -> None:
        self.prediction_result.set(prediction)
        self.prediction_confidence.set(confidence)


# A bound on the cache (endpoints × methods × statuses are bounded, but not tiny).
_MAX_CACHED_ATTRIBUTE_SETS = 256
# Attribute sets built once and reused: the SDK hashes a new dict on every record.
_ENDPOINT_ATTRIBUTES = {path: {"endpoint": path} for path in PREDICTION_ENDPOINTS}
_REFUSAL_ATTRIBUTES = {
    (path, status): {"endpoint": path, "reason": reason}
    for path in GUARDED_ENDPOINTS
    for status, reason in REFUSALS.items()
}


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def logged_path(path: str) -> str:
    if len(path) <= MAX_LOGGED_PATH:
        return path
    return f"{path[:MAX_LOGGED_PATH]}…(+{len(path) - MAX_LOGGED_PATH} characters)"


class ObservabilityMiddleware:
    """Times every request, accounts for prediction requests, writes one JSON log line."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._timing_attributes: dict[tuple[str, str, int], dict[str, str]] = {}

    def _timing(self, endpoint: str, method: str, status: int) -> dict[str, str]:
        key = (endpoint, method, status)
        attributes = self._timing_attributes.get(key)
        if attributes is None:
            attributes = {"endpoint": endpoint, "method": method, "status_code": str(status)}
            if len(self._timing_attributes) < _MAX_CACHED_ATTRIBUTE_SETS:
                self._timing_attributes[key] = attributes
        return attributes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        state: dict[str, Any] = scope.setdefault("state", {})
        state[STARTED_AT] = start
        predicting = method == "POST" and path in PREDICTION_ENDPOINTS
        rss_before = self.metrics.rss() if predicting else 0
        client = scope.get("client")
        if client:
            # FastAPI's SERVER span leaves out the peer (semantic conventions: recommended).
            # uvicorn has already replaced it by X-Forwarded-For when, and only when, the
            # connection came from a configured proxy (*_FORWARDED_ALLOW_IPS).
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("client.address", client[0])
        status = 500  # what the client gets if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ctx = trace.get_current_span().get_span_context()
                if ctx.is_valid:
                    headers = list(message.get("headers", []))
                    headers.append((b"x-trace-id", format(ctx.trace_id, "032x").encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            duration = time.perf_counter() - start
            route = scope.get("route")
            # The route template keeps the label set bounded; unknown paths share one value.
            # A refusal by the guard never reaches routing: its path is a known route then.
            endpoint = getattr(route, "path", None) or (
                path if path in GUARDED_ENDPOINTS else "unmatched"
            )
            self.metrics.endpoint_time.record(
                duration, self._timing(endpoint, method_label(method), status)
            )
            reason = None
            if predicting and state.get(ADMITTED):
                if status == 200:
                    self.metrics.successful.add(1, _ENDPOINT_ATTRIBUTES[path])
                else:
                    reason = state.get(FAILURE_REASON) or reason_for_status(status)
                    self.metrics.failed.add(1, {"endpoint": path, "reason": reason})
                self.metrics.memory_per_request.set(max(0, self.metrics.rss() - rss_before))
            elif status in REFUSALS and path in GUARDED_ENDPOINTS:
                # Before admission (guard) or after it (feedback from the wrong key, or
                # too often); never counted as served or failed traffic.
                reason = REFUSALS[status]
                self.metrics.refused.add(1, _REFUSAL_ATTRIBUTES[(path, status)])
            if not path.startswith(PROBE_PREFIXES):
                access_log.info(
                    "request",
                    extra={
                        "method": method_label(method),
                        "path": logged_path(path),
                        "route": endpoint,
                        "status": status,
                        "duration_ms": round(duration * 1000, 3),
                        **({"reason": reason} if reason else {}),
                    },
                )
