"""POST /predict and /predict/batch: validated rows through the batcher to the model server."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from opentelemetry import trace
from pydantic import BaseModel

from api.batching import MicroBatcher
from api.body import RowLimit, StrictJsonRoute
from api.deps import BatcherDep, MetricsDep, MonitorDep
from api.model_client import ModelAnswer
from api.monitoring import ModelMonitor
from api.observability import STARTED_AT, GatewayMetrics
from api.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    Prediction,
    PredictRequest,
    PredictResponse,
)

# Bodies read under the gateway's JSON policy (api.body), not FastAPI's bare json.loads.
router = APIRouter(tags=["predictions"], route_class=StrictJsonRoute)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (422, "Invalid input: the message names the field or position"),
        (502, "The model server answered with something that is not a valid prediction"),
        (503, "The model server is unreachable or not ready"),
        (504, "The model server did not answer within the deadline"),
    )
}


def _trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def _elapsed(request: Request) -> float:
    started = request.scope.get("state", {}).get(STARTED_AT)
    return round(time.perf_counter() - started, 6) if started else 0.0


def _json(body: BaseModel) -> Response:
    """The response, serialized once by pydantic's Rust serializer.

    Returning a Response skips FastAPI's own serialize_response, which validates the model
    against `response_model` again and then encodes it through jsonable_encoder and
    json.dumps: the biggest single share of a prediction's CPU in the gateway's route. The
    decorators keep `response_model`, so the OpenAPI schema is unchanged (and tested)."""
    return Response(content=body.model_dump_json(), media_type="application/json")


def _predictions(answer: ModelAnswer, monitor: ModelMonitor) -> list[Prediction]:
    # model_construct: every value was checked by the model client (ModelClient._parse) or
    # made here; validating it again would only cost time.
    return [
        Prediction.model_construct(
            prediction=row.prediction,
            label=row.label,
            prediction_probabilities=list(row.probabilities),
            confidence=row.confidence,
            prediction_id=monitor.issue_id(row.prediction, answer.model_version),
        )
        for row in answer.rows
    ]


async def score(
    rows: list[list[int]], batcher: MicroBatcher, metrics: GatewayMetrics, monitor: ModelMonitor
) -> tuple[list[Prediction], str]:
    """Predict rows through the batcher and record what the model said about them."""
    answer = await batcher.predict(rows)
    predictions = _predictions(answer, monitor)
    last = predictions[-1]
    metrics.record_prediction(last.prediction, last.confidence)
    monitor.observe(rows, [(p.prediction_id, p.prediction, p.confidence) for p in predictions])
    return predictions, answer.model_version


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    summary="Predict the risk level of one patient",
)
async def predict(
    body: PredictRequest,
    request: Request,
    batcher: BatcherDep,
    metrics: MetricsDep,
    monitor: MonitorDep,
) -> Response:
    (prediction,), model_version = await score([body.row()], batcher, metrics, monitor)
    return _json(
        PredictResponse.model_construct(
            **prediction.__dict__,
            model_version=model_version,
            trace_id=_trace_id(),
            latency_seconds=_elapsed(request),
        )
    )


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
    summary="Predict several patients in one call (LUNGWATCH_GATEWAY_PREDICT_BATCH_MAX_ROWS)",
)
async def predict_batch(
    _: RowLimit,  # first: the row count is checked before any row is validated
    body: BatchRequest,
    request: Request,
    batcher: BatcherDep,
    metrics: MetricsDep,
    monitor: MonitorDep,
) -> Response:
    rows = [row.row() for row in body.rows]
    predictions, model_version = await score(rows, batcher, metrics, monitor)
    return _json(
        BatchResponse.model_construct(
            predictions=predictions,
            model_version=model_version,
            trace_id=_trace_id(),
            latency_seconds=_elapsed(request),
        )
    )
