"""The gateway's own reading of JSON request bodies: one input policy (duplicate keys, object
size, number size, nesting, batch rows) applied before pydantic sees a value.

FastAPI would parse with a bare `json.loads`: the last of two equal keys wins silently, a
5,001-digit number and a too-deep body both become an anonymous 400, and a batch of 340,000
rows is validated row by row before its row count is looked at. Routes whose router uses
`StrictJsonRoute` get `parse_json` instead; `refuse_extra_rows` checks the row count on the
parsed JSON, before validation. No message echoes a value from the body.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

# No object of the request schemas has more than 23 keys (Patient). A cap well above that
# keeps an object of 100,000 unknown keys from becoming 100,000 validation errors.
MAX_OBJECT_KEYS = 64
# Longest key a message names; a longer one is described by its length.
_MAX_KEY_SHOWN = 40


class BodyRefused(HTTPException):
    """A body refused by the gateway's own parsing; `api.errors` answers it like a validation
    error: `{"error": "invalid_request", "message": ..., "errors": [{"field", "message"}]}`."""

    def __init__(self, status_code: int, problem: str, field: str = "body") -> None:
        super().__init__(status_code=status_code, detail=problem)
        self.field = field
        self.problem = problem


class _ObjectRefused(ValueError):
    """Raised inside the decoder; becomes a 422 BodyRefused once the parse has unwound."""


def _shown(key: str) -> str:
    if len(key) <= _MAX_KEY_SHOWN and key.isprintable() and "`" not in key:
        return f"`{key}`"
    return f"a key of {len(key)} characters"


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Called for every JSON object; on the happy path one dict() and two len() calls.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _ObjectRefused(f"duplicate key {_shown(key)} in a JSON object: send it once")
            seen.add(key)
    if len(obj) > MAX_OBJECT_KEYS:
        raise _ObjectRefused(
            f"a JSON object with {len(obj)} keys: no object of the request schema has more "
            f"than {MAX_OBJECT_KEYS}"
        )
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def parse_json(raw: bytes) -> Any:
    """The body as JSON under the gateway's policy. Raises json.JSONDecodeError for a syntax
    error (FastAPI turns it into its usual 422 `json_invalid`) and BodyRefused otherwise."""
    try:
        # What json.loads does with bytes, without building a new decoder per call.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        raise BodyRefused(400, "request body is not UTF-8 text") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except _ObjectRefused as exc:
        raise BodyRefused(422, str(exc)) from None
    except RecursionError:
        raise BodyRefused(400, "request body is nested too deeply to be a request") from None
    except ValueError:
        # Python refuses to convert an integer of more than sys.get_int_max_str_digits()
        # digits; its message would say how many digits the value has, nothing more.
        limit = sys.get_int_max_str_digits()
        raise BodyRefused(
            400, f"a number in the request body is too large (more than {limit} digits)"
        ) from None


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON body is read by `parse_json` (FastAPI calls `request.json()`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler


async def refuse_extra_rows(request: Request) -> None:
    """422 when a batch has more rows than LUNGWATCH_GATEWAY_PREDICT_BATCH_MAX_ROWS, decided
    on the parsed JSON: FastAPI solves dependencies before it validates the body, and
    request.json() returns the body it already parsed."""
    # Not SettingsDep: api.deps imports the guard, which imports api.errors, which imports this.
    limit: int = request.app.state.settings.predict_batch_max_rows
    try:
        body = await request.json()
    except (ValueError, HTTPException):
        return  # a body FastAPI did not parse as JSON (empty, not JSON): validation answers
    rows = body.get("rows") if isinstance(body, dict) else None
    if isinstance(rows, list) and len(rows) > limit:
        raise BodyRefused(422, f"at most {limit} rows per call, got {len(rows)}", "rows")


RowLimit = Annotated[None, Depends(refuse_extra_rows)]
