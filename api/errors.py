"""JSON error responses; each also records the failure reason the accounting will count."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import Scope

from api.observability import FAILURE_REASON
from api.schemas import ErrorResponse


def error_response(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """`{"error": code, "message": ...}`. Every 4xx counts as reason `invalid_request` (the
    client's doing, outside the availability SLO); a 5xx counts under its own code."""
    scope.setdefault("state", {})[FAILURE_REASON] = "invalid_request" if status < 500 else code
    body = ErrorResponse(error=code, message=message, errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)
