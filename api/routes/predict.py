"""POST /predict and /predict/batch: validated rows through the batcher to the model server."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from opentelemetry import trace
from pydantic import BaseModel

from api.body import RowLimit, StrictJsonRoute
from api.deps import MetricsDep, MonitorDep, RolloutDep
from api.errors import error_response
from api.model_client import ModelAnswer
from api.monitoring import ModelMonitor
from api.observability import STARTED_AT, GatewayMetrics
from api.rollout import MAX_STICKY_KEY_BYTES, Rollout
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
        (400, "The sticky-key header is longer than 256 bytes"),
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
            prediction_id=monitor.issue_id(row.prediction, answer.model_version, row.probabilities),
        )
        for row in answer.rows
    ]


def _sticky_key(request: Request, rollout: Rollout) -> str | None | Response:
    """The canary's sticky key (its header), or the 400 that refuses an oversized one."""
    key = request.headers.get(rollout.sticky_header)
    # Starlette decodes header bytes as latin-1: that length is the bytes sent.
    if key is not None and len(key) > MAX_STICKY_KEY_BYTES:
        return error_response(
            request.scope,
            400,
            "invalid_sticky_key",
            f"{rollout.sticky_header}: at most {MAX_STICKY_KEY_BYTES} bytes, got {len(key)}",
        )
    return key


async def score(
    rows: list[list[int]],
    rollout: Rollout,
    metrics: GatewayMetrics,
    monitor: ModelMonitor,
    sticky_key: str | None = None,
) -> tuple[list[Prediction], str]:
    """Predict rows (champion or, under canary, maybe the challenger) and record what the
    model said about them."""
    answer = await rollout.predict(rows, sticky_key)
    predictions = _predictions(answer, monitor)
    last = predictions[-1]
    metrics.record_prediction(last.prediction, last.confidence)
    monitor.observe(rows, answer, sticky_key)
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
    rollout: RolloutDep,
    metrics: MetricsDep,
    monitor: MonitorDep,
) -> Response:
    sticky = _sticky_key(request, rollout)
    if isinstance(sticky, Response):
        return sticky
    (prediction,), model_version = await score([body.row()], rollout, metrics, monitor, sticky)
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
    rollout: RolloutDep,
    metrics: MetricsDep,
    monitor: MonitorDep,
) -> Response:
    sticky = _sticky_key(request, rollout)
    if isinstance(sticky, Response):
        return sticky
    rows = [row.row() for row in body.rows]
    predictions, model_version = await score(rows, rollout, metrics, monitor, sticky)
    return _json(
        BatchResponse.model_construct(
            predictions=predictions,
            model_version=model_version,
            trace_id=_trace_id(),
            latency_seconds=_elapsed(request),
        )
    )
