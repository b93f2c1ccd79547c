"""The gateway's app factory: builds the objects, stores them on app.state, includes routers.

Routes live in `api.routes.*` and reach these objects through the typed dependencies of
`api.deps`, so a test builds an app with other settings, in-memory telemetry or another
model client, or overrides one dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api.batching import MicroBatcher
from api.circuit import CircuitBreaker
from api.errors import install_exception_handlers
from api.feedback_store import AnsweredIds
from api.guard import RequestGuard
from api.model_client import ModelClient
from api.monitoring import FeedbackStore, ModelMonitor
from api.observability import (
    GUARDED_ENDPOINTS,
    PROBE_PREFIXES,
    GatewayMetrics,
    ObservabilityMiddleware,
)
from api.prediction_ids import PredictionIds
from api.rollout import CANARY, SHADOW, Rollout, ShadowScorer
from api.routes import feedback, health, predict
from api.routes.health import ReadinessCache
from contract.settings import GatewaySettings
from contract.wire import CHALLENGER
from telemetry import Telemetry, build_telemetry
from telemetry import instruments as ins

SERVICE_NAME = "lungwatch-gateway"


def build_model_client(
    settings: GatewaySettings, telemetry: Telemetry, role: str = "champion", **kwargs: Any
) -> ModelClient:
    """The champion's client, or (role challenger) one of the challenger's: its own pool,
    breaker and deadline, so a failing challenger cannot trip the champion's breaker."""
    url = settings.challenger_url if role == CHALLENGER and settings.challenger_url else None
    return ModelClient(
        url or settings.model_server_url,
        telemetry,
        connect_timeout=settings.model_server_connect_timeout_seconds,
        timeout=settings.model_server_timeout_seconds,
        max_connections=settings.model_server_max_connections,
        breaker=CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_reset_seconds),
        secret=settings.model_server_secret,
        role=role,
        **kwargs,
    )


def build_batcher(
    settings: GatewaySettings, telemetry: Telemetry, client: ModelClient
) -> MicroBatcher:
    return MicroBatcher(
        client,
        telemetry,
        enabled=settings.batching,
        max_rows=settings.batch_max_rows,
        max_wait_seconds=settings.batch_max_wait_ms / 1000,
        max_calls_in_flight=settings.batch_max_calls_in_flight,
    )


def build_rollout(
    settings: GatewaySettings, telemetry: Telemetry, champion: MicroBatcher
) -> tuple[Rollout, list[ModelClient]]:
    """The rollout LUNGWATCH_GATEWAY_ROLLOUT_MODE asks for, and the extra clients it uses."""
    challenger: MicroBatcher | None = None
    shadow: ShadowScorer | None = None
    clients: list[ModelClient] = []
    if settings.rollout_mode == CANARY:
        client = build_model_client(settings, telemetry, CHALLENGER)
        challenger = build_batcher(settings, telemetry, client)
        clients.append(client)
    elif settings.rollout_mode == SHADOW:
        client = build_model_client(
            settings,
            telemetry,
            CHALLENGER,
            latency=ins.SHADOW_LATENCY,
            span_name="model_server.shadow_predict",
        )
        shadow = ShadowScorer(
            client,
            telemetry,
            queue_rows=settings.shadow_queue_rows,
            max_rows=settings.shadow_max_rows,
            max_wait_seconds=settings.shadow_max_wait_ms / 1000,
        )
        clients.append(client)
    rollout = Rollout(
        champion,
        telemetry,
        mode=settings.rollout_mode,
        percent=settings.rollout_percent,
        challenger=challenger,
        shadow=shadow,
        sticky_header=settings.canary_sticky_header,
    )
    return rollout, clients


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Drift monitoring and the separate metrics port run while the app serves; on the way
    out the model client closes and, when the app built its telemetry, buffers are flushed."""
    settings: GatewaySettings = app.state.settings
    telemetry: Telemetry = app.state.telemetry
    client: ModelClient = app.state.model_client
    metrics_server = None
    if settings.metrics_port:
        from prometheus_client import start_http_server

        metrics_server, _ = start_http_server(
            settings.metrics_port, addr=settings.host, registry=telemetry.registry
        )
    challenger_clients: list[ModelClient] = app.state.challenger_clients

    def served_versions() -> list[str]:
        # The versions answers came from lately: the champion's, and the challenger's.
        found = [c.last_model_version for c in (client, *challenger_clients)]
        return list(dict.fromkeys(v for v in found if v is not None))

    tasks = [
        asyncio.create_task(
            app.state.monitor.run(
                client.reference, served_versions, settings.drift_interval_seconds
            )
        ),
        *(asyncio.create_task(run()) for run in app.state.rollout.background()),
    ]
    yield
    for task in tasks:
        task.cancel()
    await app.state.monitor.aclose()  # the shared feedback store's connections
    if metrics_server is not None:
        metrics_server.shutdown()
    await client.aclose()
    for extra in challenger_clients:
        await extra.aclose()
    if app.state.owns_telemetry:
        telemetry.shutdown()  # flush spans and metrics still buffered


def create_app(
    settings: GatewaySettings | None = None,
    telemetry: Telemetry | None = None,
    model_client: ModelClient | None = None,
) -> FastAPI:
    """Build the gateway. Tests pass in-memory telemetry or another model client."""
    settings = settings or GatewaySettings()
    owns_telemetry = telemetry is None
    telemetry = telemetry or build_telemetry(
        SERVICE_NAME, span_export_process=settings.span_export_process
    )
    client = model_client or build_model_client(settings, telemetry)

    app = FastAPI(
        title="Lungwatch gateway",
        version="0.1.0",
        description=(
            "Lung-cancer risk (Low / Medium / High) from 23 clinical features, served by an "
            "MLflow model server behind an OpenTelemetry-instrumented gateway."
        ),
        lifespan=lifespan,
        # No redirect from /predict/ to /predict: Starlette builds its Location from the
        # request's Host header, before authentication (a redirect to any host).
        redirect_slashes=False,
        # SERVER spans from FastAPI's own OpenTelemetry support: W3C context from the
        # caller, named by route template, current while every middleware of ours runs (so
        # histogram records carry exemplars and log lines the trace id). No metrics (our
        # endpoint_request_time_seconds times every request), no log records (they would
        # carry validation errors, i.e. input values), no per-operation spans; probes and
        # scrapes untraced. It does what opentelemetry-instrumentation-fastapi did for
        # about half the CPU per request (issue 11).
        telemetry={
            "tracer_provider": telemetry.tracer_provider,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
            "exclude": _untraced,
        },
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.owns_telemetry = owns_telemetry
    app.state.metrics = metrics = GatewayMetrics(telemetry)
    app.state.model_client = client
    app.state.readiness_cache = ReadinessCache()
    app.state.batcher = build_batcher(settings, telemetry, client)
    app.state.rollout, app.state.challenger_clients = build_rollout(
        settings, telemetry, app.state.batcher
    )
    app.state.monitor = ModelMonitor(
        telemetry,
        drift_window_rows=settings.drift_window_rows,
        quality_monitoring=settings.quality_monitoring,
        feedback=FeedbackStore(
            window=settings.feedback_window,
            max_pending=settings.feedback_max_pending,
            ttl_seconds=settings.feedback_ttl_seconds,
        ),
        ids=PredictionIds.from_settings(settings),
        answered=AnsweredIds.from_settings(settings, telemetry),
    )

    install_exception_handlers(app)
    app.include_router(predict.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    if not settings.metrics_port:
        app.include_router(health.metrics_router)

    # add_middleware wraps: the last added runs first. The guard runs inside the
    # accounting middleware, which times and logs its refusals; the guard says when a
    # request is admitted (counted as traffic), so refusals stay out of the traffic counts.
    app.add_middleware(
        RequestGuard,
        guarded_paths=GUARDED_ENDPOINTS,
        admit=metrics.admit,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        api_keys=settings.api_key_list,
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return bool(scope.get("path", "").startswith(PROBE_PREFIXES))
