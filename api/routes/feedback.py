"""POST /feedback: the true level of an earlier prediction, for online accuracy and recall.

The prediction id carries what the check needs (signed: see api.prediction_ids), so any
replica answers, whichever one made the prediction.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import MonitorDep
from api.errors import error_response
from api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter(tags=["monitoring"])

STATUS = {
    "unknown_prediction": 404,
    "expired_prediction": 410,
    "duplicate": 409,
}


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        404: {"model": ErrorResponse, "description": "Not an id this service issued"},
        409: {"model": ErrorResponse, "description": "This prediction already has feedback"},
        410: {"model": ErrorResponse, "description": "The prediction is too old for feedback"},
        422: {"model": ErrorResponse, "description": "Invalid body"},
    },
    summary="Report the true level of an earlier prediction (online accuracy)",
)
async def feedback(
    body: FeedbackRequest, request: Request, monitor: MonitorDep
) -> FeedbackResponse | JSONResponse:
    outcome = await monitor.record_feedback(body.prediction_id, body.true_class)
    if outcome.result != "accepted":
        message = f"prediction {body.prediction_id}: {outcome.message}"
        return error_response(request.scope, STATUS[outcome.result], outcome.result, message)
    return FeedbackResponse(
        status="recorded", prediction_id=body.prediction_id, correct=outcome.correct
    )
