"""The model server's own input rules and its shared-secret guard, and the gateway's client
bearing the secret, in process (no model, no server).

The real server answering with them: tests/integration/test_model_server_security.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api.model_client import ModelClient
from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES, FEATURES
from contract.wire import ROWS_PATH
from devtools.procs import free_port
from model.serve import BadRows, SharedSecretGuard, check_frame, parse_rows
from telemetry import build_telemetry

ROW = list(EXAMPLE_FEATURES)


def lean(*rows: list[Any]) -> bytes:
    return orjson.dumps({"rows": list(rows)})


def test_rows_at_every_features_bounds_are_accepted_as_int64() -> None:
    lowest = [f.minimum for f in FEATURES]
    highest = [f.maximum for f in FEATURES]
    batch = parse_rows(lean(lowest, highest, [float(v) for v in ROW]))
    assert batch.dtype == np.int64
    assert batch.tolist() == [lowest, highest, ROW]  # 33.0 is 33, as at the gateway
    frame = check_frame(pd.DataFrame([lowest, highest], columns=list(FEATURE_NAMES)))
    assert frame.to_numpy().tolist() == [lowest, highest]


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, 121, "age must be within 1..120 (row 1)"),
        (0, 987_654, "age must be within 1..120 (row 1)"),
        (0, 1e308, "age must be within 1..120 (row 1)"),
        (0, -(2**63), "age must be within 1..120 (row 1)"),
        (1, 0, "gender must be within 1..2 (row 1)"),
        (22, 8, "snoring must be within 1..7 (row 1)"),
        (0, 33.5, "age must be a whole number in 1..120 (row 1)"),
        (0, None, "age must be a number in 1..120 (row 1)"),
        (0, True, "integers"),
        (0, "33", "must be a number"),
    ],
)
def test_a_value_out_of_range_or_not_an_integer_is_refused_naming_the_feature(
    position: int, value: Any, message: str
) -> None:
    row = list(ROW)
    row[position] = value
    with pytest.raises(BadRows) as refused:
        parse_rows(lean(ROW, row))
    assert message in str(refused.value)
    assert repr(value) not in str(refused.value).replace("1..", "")
    if value is not True:  # pandas reads a lone boolean as a boolean column, refused too
        with pytest.raises(BadRows, match="must be"):
            check_frame(pd.DataFrame([ROW, row], columns=list(FEATURE_NAMES)))


def test_a_frame_without_the_features_is_refused_by_name() -> None:
    with pytest.raises(BadRows, match="missing feature columns: age"):
        check_frame({"gender": [1]})


SECRET = "s3cr3t-" * 4


def guarded_client() -> TestClient:
    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route(p, ok) for p in ("/ping", "/health", "/metrics", "/docs", "/reference")]
    return TestClient(SharedSecretGuard(Starlette(routes=routes), secret=SECRET))


def test_the_guard_lets_the_secret_and_the_probes_through_only() -> None:
    client = guarded_client()
    for path in ("/ping", "/health", "/metrics"):
        assert client.get(path).status_code == 200
    for headers in (
        {},
        {"authorization": f"Bearer {SECRET[:-1]}"},
        {"authorization": f"Bearer {SECRET}x"},
        {"authorization": f"bearer {SECRET}"},
    ):
        refused = client.get("/docs", headers=headers)
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "unauthorized",
            "message": "this model server answers only the Lungwatch gateway",
        }
        assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/reference", headers={"authorization": f"Bearer {SECRET}"}).text == "ok"
    # Two credentials: refused rather than choosing one.
    both = [("authorization", f"Bearer {SECRET}"), ("authorization", "Bearer other")]
    assert client.get("/docs", headers=both).status_code == 401


def test_the_gateways_client_bears_the_secret_on_every_call() -> None:
    seen: dict[str, str | None] = {}

    async def handler(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get("authorization")
        if request.path == ROWS_PATH:
            return web.json_response({"probabilities": [[0.2, 0.3, 0.5]]})
        return web.json_response({"version": "1"})

    async def calls() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = ModelClient(f"http://127.0.0.1:{port}", build_telemetry("unit"), secret=SECRET)
        try:
            await client.predict([list(EXAMPLE_FEATURES)])
            await client.ready()
            await client.reference()
        finally:
            await client.aclose()
            await runner.cleanup()

    asyncio.run(calls())
    assert seen == {p: f"Bearer {SECRET}" for p in (ROWS_PATH, "/ping", "/model", "/reference")}
