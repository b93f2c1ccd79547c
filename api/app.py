"""The gateway's app factory: routes, error handling, telemetry and model-client wiring."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from starlette.exceptions import HTTPException

from api.batching import MicroBatcher
from api.circuit import CircuitBreaker, retry_after_header
from api.errors import error_response
from api.guard import RequestGuard
from api.model_client import CircuitOpen, ModelAnswer, ModelClient, ModelServerError
from api.monitoring import FeedbackStore, ModelMonitor
from api.observability import (
    PREDICTION_ENDPOINTS,
    STARTED_AT,
    GatewayMetrics,
    ObservabilityMiddleware,
)
from api.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    Prediction,
    PredictRequest,
    PredictResponse,
)
from api.settings import Settings
from telemetry import Telemetry, build_telemetry

log = logging.getLogger("lungwatch.gateway")

SERVICE_NAME = "lungwatch-gateway"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (422, "Invalid input: the message names the field or position"),
        (502, "The model server answered with something that is not a valid prediction"),
        (503, "The model server is unreachable or not ready"),
        (504, "The model server did not answer within the deadline"),
    )
}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def _describe(error: dict[str, Any]) -> dict[str, str]:
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    field = _field_name(tuple(error.get("loc", ())))
    if kind == "json_invalid":
        ctx = error.get("ctx", {}).get("error", "")
        message = f"request body is not valid JSON ({ctx})" if ctx else "request body is not JSON"
        field = "body"
    elif kind == "missing" and field == "body":
        message = "request body is empty: send a JSON object"
    elif kind == "extra_forbidden":
        message = "unknown field: not part of the request schema"
    return {"field": field, "message": message}


def _trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def _elapsed(request: Request) -> float:
    started = request.scope.get("state", {}).get(STARTED_AT)
    return round(time.perf_counter() - started, 6) if started else 0.0


def _predictions(answer: ModelAnswer) -> list[Prediction]:
    return [
        Prediction(
            prediction=row.prediction,
            label=row.label,
            prediction_probabilities=list(row.probabilities),
            confidence=row.confidence,
            prediction_id=uuid.uuid4().hex,
        )
        for row in answer.rows
    ]


def get_model_client(request: Request) -> ModelClient:
    client: ModelClient = request.app.state.model_client
    return client


Client = Annotated[ModelClient, Depends(get_model_client)]


def create_app(
    settings: Settings | None = None,
    telemetry: Telemetry | None = None,
    model_client: ModelClient | None = None,
) -> FastAPI:
    """Build the gateway. Tests pass in-memory telemetry or another model client."""
    settings = settings or Settings()
    owns_telemetry = telemetry is None
    telemetry = telemetry or build_telemetry(SERVICE_NAME)
    client = model_client or ModelClient(
        settings.model_server_url,
        telemetry,
        connect_timeout=settings.model_connect_timeout_seconds,
        timeout=settings.model_timeout_seconds,
        max_connections=settings.model_max_connections,
        breaker=CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_reset_seconds),
    )
    metrics = GatewayMetrics(telemetry)
    batcher = MicroBatcher(
        client,
        telemetry,
        enabled=settings.batching,
        max_batch=settings.max_batch,
        max_wait_seconds=settings.batch_wait_ms / 1000,
        max_concurrency=settings.batch_max_concurrency,
    )
    monitor = ModelMonitor(
        telemetry,
        drift_window_rows=settings.drift_window_rows,
        feedback=FeedbackStore(
            window=settings.feedback_window,
            max_pending=settings.feedback_max_pending,
            ttl_seconds=settings.feedback_ttl_seconds,
        ),
    )
    ready_cache: dict[str, Any] = {"at": -1e9, "value": (False, {})}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = None
        if settings.metrics_port:
            from prometheus_client import start_http_server

            metrics_server, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=telemetry.registry
            )
        monitoring = asyncio.create_task(
            monitor.run(
                client.reference,
                lambda: client.last_model_version,
                settings.drift_interval_seconds,
            )
        )
        yield
        monitoring.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
        await client.aclose()
        if owns_telemetry:
            telemetry.shutdown()  # flush spans and metrics still buffered

    app = FastAPI(
        title="Lungwatch gateway",
        version="0.1.0",
        description=(
            "Lung-cancer risk (Low / Medium / High) from 23 clinical features, served by an "
            "MLflow model server behind an OpenTelemetry-instrumented gateway."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.metrics = metrics
    app.state.model_client = client
    app.state.monitor = monitor
    app.state.batcher = batcher

    async def score(rows: list[list[int]]) -> tuple[list[Prediction], str]:
        """Predict rows through the batcher and record what the model said about them."""
        answer = await batcher.predict(rows)
        predictions = _predictions(answer)
        last = predictions[-1]
        metrics.record_prediction(last.prediction, last.confidence)
        monitor.observe(rows, [(p.prediction_id, p.prediction, p.confidence) for p in predictions])
        return predictions, answer.model_version

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_describe(e) for e in exc.errors()]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return error_response(request.scope, 422, "invalid_request", summary, errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400:
            # FastAPI's answer to a body json.loads cannot handle (e.g. nested too deep).
            message = "request body could not be parsed as JSON (too deeply nested or invalid)"
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(request.scope, exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(ModelServerError)
    async def model_error(request: Request, exc: ModelServerError) -> JSONResponse:
        if not isinstance(exc, CircuitOpen):  # while open, the access line says enough
            log.warning("model server error", extra={"reason": exc.reason, "error": exc.message})
        headers = None
        if exc.status_code == 503:
            headers = {"Retry-After": retry_after_header(exc.retry_after or 1)}
        return error_response(
            request.scope, exc.status_code, exc.reason, exc.message, headers=headers
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(request.scope, 500, "internal", "internal error; see the gateway log")

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        summary="Predict the risk level of one patient",
    )
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        (prediction,), model_version = await score([body.row()])
        return PredictResponse(
            **prediction.model_dump(),
            model_version=model_version,
            trace_id=_trace_id(),
            latency_seconds=_elapsed(request),
        )

    @app.post(
        "/predict/batch",
        response_model=BatchResponse,
        responses=ERROR_RESPONSES,
        summary=f"Predict several patients in one call (at most {settings.max_batch_rows} rows)",
    )
    async def predict_batch(body: BatchRequest, request: Request) -> BatchResponse | JSONResponse:
        if len(body.rows) > settings.max_batch_rows:
            return error_response(
                request.scope,
                422,
                "invalid_request",
                f"rows: at most {settings.max_batch_rows} rows per call, got {len(body.rows)}",
                [{"field": "rows", "message": f"at most {settings.max_batch_rows} rows"}],
            )
        predictions, model_version = await score([row.row() for row in body.rows])
        return BatchResponse(
            predictions=predictions,
            model_version=model_version,
            trace_id=_trace_id(),
            latency_seconds=_elapsed(request),
        )

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={
            404: {"model": ErrorResponse},
            409: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
        },
        summary="Report the true level of an earlier prediction (online accuracy)",
    )
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse | JSONResponse:
        result = monitor.record_feedback(body.prediction_id, body.true_class)
        if result == "unknown_prediction":
            return error_response(
                request.scope,
                404,
                result,
                f"no prediction {body.prediction_id} awaiting feedback: unknown, older than "
                f"{settings.feedback_ttl_seconds:g}s, or not among the last "
                f"{settings.feedback_max_pending} predictions",
            )
        if result == "duplicate":
            return error_response(
                request.scope, 409, result, f"prediction {body.prediction_id} already has feedback"
            )
        return FeedbackResponse(
            status="recorded",
            prediction_id=body.prediction_id,
            correct=monitor.feedback.last_correct,
        )

    @app.get("/health", summary="Liveness: the gateway process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model server is reachable and its model loaded")
    async def ready(client: Client) -> JSONResponse:
        now = time.monotonic()
        if now - ready_cache["at"] > settings.ready_cache_seconds:
            ready_cache["value"] = await client.ready()
            ready_cache["at"] = now
        ok, detail = ready_cache["value"]
        body = {"status": "ready" if ok else "not_ready", **detail}
        return JSONResponse(body, status_code=200 if ok else 503)

    if not settings.metrics_port:

        @app.get("/metrics", summary="Prometheus metrics of the gateway")
        async def prometheus_metrics() -> Response:
            return Response(telemetry.prometheus_text(), media_type="text/plain; version=0.0.4")

    # add_middleware wraps: the last added runs first. The guard runs inside the
    # accounting, so its refusals are counted like any other failed request.
    app.add_middleware(
        RequestGuard,
        guarded_paths=PREDICTION_ENDPOINTS | {"/feedback"},
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        api_keys=settings.api_key_list,
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    # Outermost: the server span is open while our middleware runs, so its histogram
    # records carry exemplars and its log lines carry the trace id.
    telemetry.instrument_fastapi(app, excluded_urls="/health,/ready,/metrics")
    return app
