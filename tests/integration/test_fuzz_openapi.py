"""Property-based fuzzing of the gateway's OpenAPI schema (schemathesis, positive and negative
cases) against the real gateway and model server: no input may produce a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

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
