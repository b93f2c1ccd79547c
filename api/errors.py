"""JSON error responses and the gateway's exception handlers; each error also records the
failure reason the accounting middleware will count."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import Scope

from api.body import BodyRefused
from api.circuit import retry_after_header
from api.model_client import CircuitOpen, ModelServerError
from api.observability import FAILURE_REASON
from api.schemas import ErrorResponse

log = logging.getLogger("lungwatch.gateway")

# A 422 lists at most this many problems and counts the rest: an error body stays a few KB
# whatever the request held.
MAX_LISTED_ERRORS = 20


def error_response(
    scope: Scope,
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    errors_omitted: int | None = None,
) -> JSONResponse:
    """`{"error": code, "message": ...}`. Every 4xx counts as reason `invalid_request` (the
    client's doing, outside the availability SLO); a 5xx counts under its own code."""
    scope.setdefault("state", {})[FAILURE_REASON] = "invalid_request" if status < 500 else code
    body = ErrorResponse(error=code, message=message, errors=errors, errors_omitted=errors_omitted)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


def _describe(error: Mapping[str, Any]) -> dict[str, str]:
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    field = _field_name(tuple(error.get("loc", ())))
    if kind == "json_invalid":
        ctx = error.get("ctx", {}).get("error", "")
        message = f"request body is not valid JSON ({ctx})" if ctx else "request body is not JSON"
        field = "body"
    elif kind == "missing" and field == "body":
        message = "request body is empty: send a JSON object"
    elif kind == "extra_forbidden":
        message = "unknown field: not part of the request schema"
    return {"field": field, "message": message}


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    errors = [_describe(e) for e in found[:MAX_LISTED_ERRORS]]
    omitted = len(found) - len(errors)
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    if len(found) > 5:
        summary += f"; and {len(found) - 5} more"
    return error_response(
        request.scope, 422, "invalid_request", summary, errors, errors_omitted=omitted or None
    )


async def body_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyRefused)
    errors = [{"field": exc.field, "message": exc.problem}]
    message = exc.problem if exc.field == "body" else f"{exc.field}: {exc.problem}"
    return error_response(request.scope, exc.status_code, "invalid_request", message, errors)


def _unparsed_body_message(cause: BaseException | None) -> str:
    """Why FastAPI's own json.loads (routes without StrictJsonRoute) gave up on a body."""
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply to be a request"
    if isinstance(cause, UnicodeDecodeError):
        return "request body is not UTF-8 text"
    if isinstance(cause, ValueError):  # Python's limit on the digits of an integer
        return "a number in the request body is too large"
    return "request body could not be parsed as JSON"


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if exc.status_code == 400 and exc.__cause__ is not None:
        # FastAPI raises its 400 from the exception json.loads raised.
        message = _unparsed_body_message(exc.__cause__)
    code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return error_response(request.scope, exc.status_code, code, message, headers=exc.headers)


async def model_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelServerError)
    if not isinstance(exc, CircuitOpen):  # while open, the access line says enough
        log.warning("model server error", extra={"reason": exc.reason, "error": exc.message})
    headers = None
    if exc.status_code == 503:
        headers = {"Retry-After": retry_after_header(exc.retry_after or 1)}
    return error_response(request.scope, exc.status_code, exc.reason, exc.message, headers=headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return error_response(request.scope, 500, "internal", "internal error; see the gateway log")


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(BodyRefused, body_refused)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ModelServerError, model_error)
    app.add_exception_handler(Exception, unexpected_error)
