"""Typed dependencies of the gateway's routes: the objects `create_app` stored on app.state.

A route names what it needs (`batcher: BatcherDep`); a test swaps any of them with
`app.dependency_overrides[get_batcher] = ...`. They are `async def` on purpose: FastAPI runs
a plain `def` dependency in a worker thread, a thread hand-off per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.batching import MicroBatcher
from api.model_client import ModelClient
from api.monitoring import ModelMonitor
from api.observability import GatewayMetrics
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


async def get_monitor(request: Request) -> ModelMonitor:
    monitor: ModelMonitor = request.app.state.monitor
    return monitor


async def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
ModelClientDep = Annotated[ModelClient, Depends(get_model_client)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
MonitorDep = Annotated[ModelMonitor, Depends(get_monitor)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
