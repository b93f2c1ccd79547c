"""Property-based fuzzing of the gateway's OpenAPI schema (schemathesis, positive and negative
cases) against the real gateway and model server: no input may produce a 5xx. The model
server's own routes are fuzzed too, from its schema with the bodies of its two prediction
routes filled in: no 5xx, and no error body quotes the input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from contract.features import FEATURE_NAMES, FEATURES, N_FEATURES
from contract.wire import ROWS_KEY, ROWS_PATH
from tests.integration.conftest import Stack

POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Every operation that takes input, with valid-looking and with schema-violating inputs.
CASES = [
    (op, mode)
    for op in ("POST /predict", "POST /predict/batch", "POST /feedback")
    for mode in (POSITIVE, NEGATIVE)
] + [("GET /ready", POSITIVE), ("GET /health", POSITIVE)]


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_no_generated_input_gives_a_server_error(
    stack: Stack, operation: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.gateway_url}/openapi.json")
    method, path = operation.split(" ")
    api_operation = schema[path][method]
    seen: list[int] = []

    @given(case=api_operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(timeout=10)
        seen.append(response.status_code)
        assert response.status_code < 500, (
            f"{operation} -> {response.status_code}: {response.text[:300]}\n{case.body!r}"
        )
        if response.status_code >= 400:
            assert set(response.json()) >= {"error", "message"}  # always our JSON error

    check()
    assert seen, "no case was generated"
    if mode is NEGATIVE:
        assert any(400 <= code < 500 for code in seen)  # the fuzzer did reach the validation


# MLflow's routes declare no body; the two prediction routes get the one they take.
_ROW = {
    "type": "array",
    "minItems": N_FEATURES,
    "maxItems": N_FEATURES,
    "items": {"type": "integer", "minimum": 1, "maximum": 9},
}
_ROWS = {"type": "array", "minItems": 1, "maxItems": 4, "items": _ROW}
_BODIES = {
    "/invocations": {
        "type": "object",
        "required": ["dataframe_split"],
        "additionalProperties": False,
        "properties": {
            "dataframe_split": {
                "type": "object",
                "required": ["columns", "data"],
                "additionalProperties": False,
                "properties": {"columns": {"const": list(FEATURE_NAMES)}, "data": _ROWS},
            }
        },
    },
    ROWS_PATH: {
        "type": "object",
        "required": [ROWS_KEY],
        "additionalProperties": False,
        "properties": {ROWS_KEY: _ROWS},
    },
}
MODEL_SERVER_CASES = [
    (op, mode) for op in (f"POST {ROWS_PATH}", "POST /invocations") for mode in (POSITIVE, NEGATIVE)
] + [(f"GET {path}", POSITIVE) for path in ("/ping", "/version", "/model", "/reference")]


def model_server_schema(url: str) -> dict[str, Any]:
    raw: dict[str, Any] = httpx.get(f"{url}/openapi.json", timeout=10).json()
    for path, body in _BODIES.items():
        operation = raw["paths"].setdefault(path, {}).setdefault("post", {"responses": {}})
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return raw


@pytest.mark.parametrize(("operation", "mode"), MODEL_SERVER_CASES)
def test_no_generated_input_gives_the_model_server_an_error_or_an_echo(
    stack: Stack, operation: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_dict(model_server_schema(stack.model_server_url))
    method, path = operation.split(" ")
    api_operation = schema[path][method]
    seen: list[int] = []

    @given(case=api_operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=15 if method == "POST" else 1,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=stack.model_server_url, timeout=10)
        seen.append(response.status_code)
        assert response.status_code < 500, (
            f"{operation} -> {response.status_code}: {response.text[:300]}\n{case.body!r}"
        )
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "message"}
            # No value of the input comes back, except words our messages always hold
            # (feature names, bounds, the format's keys).
            message = response.json()["message"]
            for value in _scalars(case.body):
                if len(value) >= 3 and value not in _VOCABULARY:
                    assert value not in message, (value, response.text)

    check()
    assert seen, "no case was generated"
    if mode is NEGATIVE:
        assert any(400 <= code < 500 for code in seen)


_VOCABULARY = " ".join(
    [*FEATURE_NAMES, *(f"{f.minimum}..{f.maximum}" for f in FEATURES), *_BODIES, ROWS_KEY]
    + ["dataframe_split dataframe_records instances inputs columns data JSON CSV Parquet"]
)


def _scalars(body: Any) -> list[str]:
    if isinstance(body, dict):
        return [s for key, value in body.items() for s in (str(key), *_scalars(value))]
    if isinstance(body, list):
        return [s for item in body for s in _scalars(item)]
    return [] if body is None else [str(body)]
