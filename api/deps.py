"""Typed dependencies of the gateway's routes: the objects `create_app` stored on app.state.

A route names what it needs (`batcher: BatcherDep`); a test swaps any of them with
`app.dependency_overrides[get_batcher] = ...`. They are `async def` on purpose: FastAPI runs
a plain `def` dependency in a worker thread, a thread hand-off per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.batching import MicroBatcher
from api.guard import API_KEY_ID
from api.model_client import ModelClient
from api.monitoring import CALLER, FeedbackPolicy, ModelMonitor
from api.observability import GatewayMetrics
from api.rollout import Rollout
from contract.settings import GatewaySettings
from telemetry import Telemetry


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_telemetry(request: Request) -> Telemetry:
    telemetry: Telemetry = request.app.state.telemetry
    return telemetry


async def get_model_client(request: Request) -> ModelClient:
    client: ModelClient = request.app.state.model_client
    return client


async def get_batcher(request: Request) -> MicroBatcher:
    batcher: MicroBatcher = request.app.state.batcher
    return batcher


async def get_rollout(request: Request) -> Rollout:
    rollout: Rollout = request.app.state.rollout
    return rollout


async def get_caller(request: Request) -> str | None:
    """The id of the API key this request authenticated with (None with API keys off)."""
    caller: str | None = request.scope.get("state", {}).get(API_KEY_ID)
    return caller


async def get_monitor(request: Request) -> ModelMonitor:
    monitor: ModelMonitor = request.app.state.monitor
    # Runs in the request's own task, like the route after it: the prediction ids the route
    # issues are bound to this request's key (see api.monitoring.CALLER).
    CALLER.set(request.scope.get("state", {}).get(API_KEY_ID))
    return monitor


async def get_feedback_policy(request: Request) -> FeedbackPolicy:
    state = request.app.state
    policy: FeedbackPolicy | None = getattr(state, "feedback_policy", None)
    if policy is None:
        # Built on first use from the app's settings (create_app may also set it): its rate
        # buckets must outlive the request.
        policy = state.feedback_policy = FeedbackPolicy.from_settings(state.settings)
    return policy


async def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
ModelClientDep = Annotated[ModelClient, Depends(get_model_client)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
RolloutDep = Annotated[Rollout, Depends(get_rollout)]
MonitorDep = Annotated[ModelMonitor, Depends(get_monitor)]
CallerDep = Annotated[str | None, Depends(get_caller)]
FeedbackPolicyDep = Annotated[FeedbackPolicy, Depends(get_feedback_policy)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
