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

from api.circuit import retry_after_header
from api.model_client import CircuitOpen, ModelServerError
from api.observability import FAILURE_REASON
from api.schemas import ErrorResponse

log = logging.getLogger("lungwatch.gateway")


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
    errors = [_describe(e) for e in exc.errors()]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return error_response(request.scope, 422, "invalid_request", summary, errors)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if exc.status_code == 400:
        # FastAPI's answer to a body json.loads cannot handle (e.g. nested too deep).
        message = "request body could not be parsed as JSON (too deeply nested or invalid)"
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
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ModelServerError, model_error)
    app.add_exception_handler(Exception, unexpected_error)
