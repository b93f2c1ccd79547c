"""The gateway's model client: the lean path's request, and every answer that is not a
prediction refused with the status the gateway gives (502, 503, 504)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from api.model_client import ModelBadResponse, ModelClient, ModelTimeout, ModelUnavailable
from contract.wire import ROWS_PATH
from telemetry import build_telemetry


def client_answering(handler) -> ModelClient:  # type: ignore[no-untyped-def]
    return ModelClient(
        "http://model",
        build_telemetry("unit"),
        timeout=0.5,
        transport=httpx.MockTransport(handler),
    )


ROW = [0.1, 0.2, 0.7]


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
    client = client_answering(lambda request: httpx.Response(status, content=body))
    with pytest.raises(error, match=words):
        asyncio.run(client.predict([[1] * 23]))


def test_model_client_sends_validated_rows_on_the_lean_path_and_parses_the_answer() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"probabilities": [ROW, [0.5, 0.3, 0.2]]}, headers={"x-model-version": "3"}
        )

    client = client_answering(answer)
    answer_ = asyncio.run(client.predict([[1] * 23, [2] * 23]))
    (request,) = seen
    assert request.url.path == ROWS_PATH and request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"rows": [[1] * 23, [2] * 23]}
    assert answer_.model_version == "3"
    assert [r.label for r in answer_.rows] == ["High", "Low"]
    assert answer_.rows[0].prediction == 2 and answer_.rows[0].confidence == 0.7


def test_model_client_refused_connection_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ModelUnavailable, match="unreachable"):
        asyncio.run(client_answering(refuse).predict([[1] * 23]))
