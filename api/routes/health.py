"""Liveness (/health), readiness (/ready) and, on the API port, the Prometheus /metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from api.deps import ModelClientDep, SettingsDep, TelemetryDep

router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])


@dataclass
class ReadinessCache:
    """The last model-server check, reused for `ready_cache_seconds` so a busy probe does not
    hammer the model server."""

    checked_at: float = -1e9
    result: tuple[bool, dict[str, Any]] = field(default_factory=lambda: (False, {}))


async def get_readiness_cache(request: Request) -> ReadinessCache:
    cache: ReadinessCache = request.app.state.readiness_cache
    return cache


ReadinessCacheDep = Annotated[ReadinessCache, Depends(get_readiness_cache)]


@router.get("/health", summary="Liveness: the gateway process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: the model server is reachable and its model loaded")
async def ready(
    client: ModelClientDep, settings: SettingsDep, cache: ReadinessCacheDep
) -> JSONResponse:
    now = time.monotonic()
    if now - cache.checked_at > settings.ready_cache_seconds:
        cache.result = await client.ready()
        cache.checked_at = now
    ok, detail = cache.result
    body = {"status": "ready" if ok else "not_ready", **detail}
    return JSONResponse(body, status_code=200 if ok else 503)


@metrics_router.get("/metrics", summary="Prometheus metrics of the gateway")
async def prometheus_metrics(telemetry: TelemetryDep, request: Request) -> Response:
    # OpenMetrics (with exemplars) when the scraper asks for it, else the classic format.
    body, content_type = telemetry.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
