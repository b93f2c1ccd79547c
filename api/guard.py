"""Checks made before a prediction request reaches FastAPI: API key, content type, body
size and the in-flight limit. Each refusal is quick, a JSON error, and counted."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from api.observability import PREDICTION_ENDPOINTS

# Key in the ASGI scope state: which API key the request authenticated with, as a short
# digest (never the key itself), or absent when keys are off. Feedback is bound to it.
API_KEY_ID = "lungwatch.api_key_id"


def key_id(key: str | bytes) -> str:
    """A stable, non-reversible name for an API key (16 hex characters of its SHA-256)."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()[:16]


class TooLarge(Exception):
    pass


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_in_flight: int,
        api_keys: Sequence[str] = (),
        guarded_paths: frozenset[str] = PREDICTION_ENDPOINTS,
        admit: Callable[[Scope], None] = lambda scope: None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.api_keys = [k.encode() for k in api_keys if k]
        self.api_key_ids = [key_id(k) for k in self.api_keys]
        self.guarded_paths = guarded_paths
        self.admit = admit  # counts the request as traffic (api.observability)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.guarded_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refuse_by_headers(scope, headers)
        if refusal is None and scope["method"] == "POST":
            try:
                body = await self._read_body(receive, headers)
            except TooLarge:
                refusal = error_response(
                    scope,
                    413,
                    "payload_too_large",
                    f"request body exceeds {self.max_body_bytes} bytes",
                )
            else:
                receive = _replay(body, receive)
        if refusal is None:
            # Past authentication and the body checks: the request is traffic from here on,
            # whatever happens next (even the in-flight limit's 503, a server-side failure).
            self.admit(scope)
        limited = scope["path"] in PREDICTION_ENDPOINTS  # feedback never takes a slot
        if (
            refusal is None
            and limited
            and self.max_in_flight
            and self.in_flight >= self.max_in_flight
        ):
            # A quick 503 now beats an unbounded queue that times out for everyone later.
            refusal = error_response(
                scope,
                503,
                "overloaded",
                f"gateway busy: {self.in_flight} prediction requests in flight "
                f"(limit {self.max_in_flight}); retry shortly",
                headers={"Retry-After": "1"},
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if not limited:
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _refuse_by_headers(self, scope: Scope, headers: Headers):  # type: ignore[no-untyped-def]
        if self.api_keys:
            supplied = _credentials(headers)
            if supplied is None:
                return error_response(
                    scope,
                    401,
                    "unauthorized",
                    "conflicting API keys: `X-API-Key` and `Authorization: Bearer` differ; "
                    "send one",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            matched = self._match(supplied)
            if matched is None:
                return error_response(
                    scope,
                    401,
                    "unauthorized",
                    "missing or invalid API key: send it as `X-API-Key` or `Authorization: Bearer`",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            scope.setdefault("state", {})[API_KEY_ID] = self.api_key_ids[matched]
        if scope["method"] != "POST":
            return None  # FastAPI answers 405 itself
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            shown = media_type or "none"
            return error_response(
                scope,
                415,
                "unsupported_media_type",
                f"send the body as JSON with `Content-Type: application/json` (got {shown})",
            )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return error_response(
                scope,
                413,
                "payload_too_large",
                f"request body of {declared} bytes exceeds {self.max_body_bytes} bytes",
            )
        return None

    def _match(self, supplied: str) -> int | None:
        """Index of the key that matches, or None."""
        candidate = supplied.encode()
        # compare_digest against every key, so timing says nothing about which one matched.
        matches = [hmac.compare_digest(candidate, key) for key in self.api_keys]
        if not supplied or not any(matches):
            return None
        return matches.index(True)

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes:
        """The whole body, refusing it as soon as it passes the limit (chunked too)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away; the app sees an empty body and the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _credentials(headers: Headers) -> str | None:
    """The key the client sent ("" when none); None when its two headers disagree, since
    resolving that by header order would let a proxy's key and a client's key mix."""
    supplied = headers.get("x-api-key") or ""
    authorization = headers.get("authorization", "")
    bearer = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    if supplied and bearer and not hmac.compare_digest(supplied.encode(), bearer.encode()):
        return None
    return supplied or bearer


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as servers do

    return replay
