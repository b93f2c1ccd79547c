"""The gateway's model client: the lean path's request, and every answer that is not a
prediction refused with the status the gateway gives (502, 503, 504). The model server is
played by a real HTTP server on a free local port (aiohttp's), answering as each test says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from api.model_client import ModelBadResponse, ModelClient, ModelTimeout, ModelUnavailable
from contract.wire import ROWS_PATH
from devtools.procs import free_port
from telemetry import build_telemetry

ROW = [0.1, 0.2, 0.7]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def call_model(handler: Handler | None, rows: list[list[int]], timeout: float = 0.5) -> Any:
    """client.predict(rows) against a server answering with `handler` (None: no server)."""

    async def run() -> Any:
        port = free_port()
        runner = None
        if handler is not None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        client = ModelClient(f"http://127.0.0.1:{port}", build_telemetry("unit"), timeout=timeout)
        try:
            return await client.predict(rows)
        finally:
            await client.aclose()
            if runner is not None:
                await runner.cleanup()

    return asyncio.run(run())


def answering(status: int, body: bytes, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (200, b"not json", ModelBadResponse, "invalid JSON"),
        (200, b'{"probabilities": []}', ModelBadResponse, "returned 0 predictions for 1 rows"),
        (200, b'{"predictions": [[0.1, 0.2, 0.7]]}', ModelBadResponse, "returned none predictions"),
        (200, b'{"probabilities": [{"prediction": 2}]}', ModelBadResponse, "not 3 probabilities"),
        (200, b'{"probabilities": [[0.1, 0.9]]}', ModelBadResponse, "not 3 probabilities"),
        (200, b'{"probabilities": [["a", "b", "c"]]}', ModelBadResponse, "non-numeric"),
        (200, b'{"probabilities": [[0.5, 0.5, 0.7]]}', ModelBadResponse, "invalid probabilities"),
        (200, b'{"probabilities": [[-0.5, 0.8, 0.7]]}', ModelBadResponse, "invalid probabilities"),
        (500, b"boom", ModelBadResponse, "HTTP 500"),
        (503, b"", ModelUnavailable, "not ready"),
        (504, b"", ModelTimeout, "gave up"),
    ],
)  # fmt: skip
def test_model_client_refuses_what_is_not_a_prediction(
    status: int, body: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        call_model(answering(status, body), [[1] * 23])


def test_model_client_sends_validated_rows_on_the_lean_path_and_parses_the_answer() -> None:
    seen: list[tuple[str, str, bytes, str | None]] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.path, request.content_type, body, request.headers.get("traceparent")))
        return web.json_response(
            {"probabilities": [ROW, [0.5, 0.3, 0.2]]}, headers={"x-model-version": "3"}
        )

    answer_ = call_model(answer, [[1] * 23, [2] * 23])
    ((path, content_type, body, traceparent),) = seen
    assert path == ROWS_PATH and content_type == "application/json"
    assert json.loads(body) == {"rows": [[1] * 23, [2] * 23]}
    assert traceparent is not None  # the CLIENT span's W3C context reaches the model server
    assert answer_.model_version == "3"
    assert [r.label for r in answer_.rows] == ["High", "Low"]
    assert answer_.rows[0].prediction == 2 and answer_.rows[0].confidence == 0.7


def test_model_client_refused_connection_is_unavailable() -> None:
    with pytest.raises(ModelUnavailable, match="unreachable"):
        call_model(None, [[1] * 23])


def test_model_client_connection_closed_mid_answer_is_unavailable() -> None:
    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    with pytest.raises(ModelUnavailable, match="unreachable"):
        call_model(hang_up, [[1] * 23])


def test_model_client_deadline_covers_the_whole_exchange() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    with pytest.raises(ModelTimeout, match="within 0.3s"):
        call_model(slow, [[1] * 23], timeout=0.3)
