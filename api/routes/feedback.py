"""POST /feedback: the true level of an earlier prediction, for online accuracy and recall.

The prediction id carries what the check needs (signed: see api.prediction_ids), including
the API key that made the prediction, so any replica answers, whichever one made it, and
only that key (or a feedback key) may answer it: see api.monitoring.FeedbackPolicy.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.body import StrictJsonRoute
from api.deps import CallerDep, FeedbackPolicyDep, MonitorDep
from api.errors import error_response
from api.schemas import ErrorResponse, FeedbackRequest, FeedbackResponse

# Parsed like the prediction bodies: duplicate keys, huge numbers refused (api.body).
router = APIRouter(tags=["monitoring"], route_class=StrictJsonRoute)

STATUS = {
    "unknown_prediction": 404,
    "expired_prediction": 410,
    "duplicate": 409,
    "forbidden": 403,
    "rate_limited": 429,
}


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        403: {
            "model": ErrorResponse,
            "description": "The prediction was made with another API key",
        },
        404: {"model": ErrorResponse, "description": "Not an id this service issued"},
        409: {"model": ErrorResponse, "description": "This prediction already has feedback"},
        410: {"model": ErrorResponse, "description": "The prediction is too old for feedback"},
        422: {"model": ErrorResponse, "description": "Invalid body"},
        429: {
            "model": ErrorResponse,
            "description": "Too many feedback calls from this API key (see Retry-After)",
        },
    },
    summary="Report the true level of an earlier prediction (online accuracy)",
)
async def feedback(
    body: FeedbackRequest,
    request: Request,
    monitor: MonitorDep,
    caller: CallerDep,
    policy: FeedbackPolicyDep,
) -> FeedbackResponse | JSONResponse:
    outcome = await monitor.record_feedback(body.prediction_id, body.true_class, caller, policy)
    if outcome.result != "accepted":
        message = f"prediction {body.prediction_id}: {outcome.message}"
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else None
        return error_response(
            request.scope, STATUS[outcome.result], outcome.result, message, headers=headers
        )
    return FeedbackResponse(
        status="recorded", prediction_id=body.prediction_id, correct=outcome.correct
    )
