"""Unit fixtures: a gateway app with in-memory telemetry and a model client that needs no server."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.app import create_app
from api.model_client import ModelAnswer, ModelServerError, RowPrediction
from contract.drift import bin_counts
from contract.features import FEATURE_NAMES
from contract.settings import GatewaySettings
from model.dataset import load_dataset
from telemetry import Telemetry, build_telemetry


@dataclass
class ScriptedModelClient:
    """Answers like the model server would: class = argmax of fixed probabilities."""

    probabilities: tuple[float, float, float] = (0.7, 0.2, 0.1)
    error: ModelServerError | None = None
    calls: list[list[list[int]]] = field(default_factory=list)
    last_model_version: str | None = "7"

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        self.calls.append([list(r) for r in rows])
        if self.error is not None:
            raise self.error
        p = self.probabilities
        best = max(range(3), key=lambda i: p[i])
        label = ("Low", "Medium", "High")[best]
        return ModelAnswer([RowPrediction(best, label, p) for _ in rows], model_version="7")

    async def reference(self, version: str | None = None) -> dict[str, object]:
        frame = load_dataset()
        return {"counts": bin_counts(frame[list(FEATURE_NAMES)].to_numpy().tolist())}

    async def ready(self) -> tuple[bool, dict[str, object]]:
        return (self.error is None), {}

    async def aclose(self) -> None:
        pass


@dataclass
class App:
    client: TestClient
    model: ScriptedModelClient
    telemetry: Telemetry
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader


@pytest.fixture
def gateway() -> Iterator[App]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = build_telemetry("lungwatch-gateway", span_exporter=spans, metric_readers=[reader])
    model = ScriptedModelClient()
    settings = GatewaySettings(predict_batch_max_rows=5, drift_interval_seconds=0.05)
    app = create_app(settings, telemetry=telemetry, model_client=model)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield App(client, model, telemetry, spans, reader)
    telemetry.shutdown()
