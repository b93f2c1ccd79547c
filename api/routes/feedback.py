"""POST /feedback: the true level of an earlier prediction, for online accuracy and recall."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import MonitorDep, SettingsDep
from api.errors import error_response
from api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["monitoring"])


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
    summary="Report the true level of an earlier prediction (online accuracy)",
)
async def feedback(
    body: FeedbackRequest, request: Request, settings: SettingsDep, monitor: MonitorDep
) -> FeedbackResponse | JSONResponse:
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
        status="recorded", prediction_id=body.prediction_id, correct=monitor.feedback.last_correct
    )
