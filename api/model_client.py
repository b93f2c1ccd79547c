"""The only way the gateway reaches the model server: one pooled httpx client with deadlines.

Every failure becomes a ModelServerError with the HTTP status and reason the gateway answers
with: 503 unreachable, 504 past the deadline, 502 for an answer that is not a valid
prediction. A made-up prediction is never returned.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from api.circuit import CircuitBreaker, CircuitOpenError
from contract.features import LABELS
from contract.settings import GATEWAY_DEFAULTS
from contract.wire import JSON, MODEL_VERSION_HEADER, PROBABILITIES_KEY, ROWS_KEY, ROWS_PATH
from telemetry import Telemetry
from telemetry import instruments as ins


class ModelServerError(Exception):
    status_code = 502
    reason = "model_bad_response"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ModelUnavailable(ModelServerError):
    status_code = 503
    reason = "model_unavailable"


class CircuitOpen(ModelUnavailable):
    reason = "circuit_open"


class ModelTimeout(ModelServerError):
    status_code = 504
    reason = "model_timeout"


class ModelBadResponse(ModelServerError):
    status_code = 502
    reason = "model_bad_response"


@dataclass(frozen=True)
class RowPrediction:
    prediction: int
    label: str
    probabilities: tuple[float, float, float]

    @property
    def confidence(self) -> float:
        return max(self.probabilities)


@dataclass(frozen=True)
class ModelAnswer:
    rows: list[RowPrediction]
    model_version: str


class ModelClient:
    def __init__(
        self,
        base_url: str,
        telemetry: Telemetry,
        *,
        connect_timeout: float = GATEWAY_DEFAULTS.model_server_connect_timeout_seconds,
        timeout: float = GATEWAY_DEFAULTS.model_server_timeout_seconds,
        max_connections: int = GATEWAY_DEFAULTS.model_server_max_connections,
        breaker: CircuitBreaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        secret: str = "",
    ) -> None:
        """`transport` replaces the network (tests pass an `httpx.MockTransport`); `secret`
        is the model server's shared secret, sent on every call."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker(failure_threshold=0)
        # The version the model server last answered with (x-model-version header).
        self.last_model_version: str | None = None
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            headers={"authorization": f"Bearer {secret}"} if secret else None,
        )
        # CLIENT spans that inject W3C traceparent, so the model server joins the trace.
        HTTPXClientInstrumentor.instrument_client(
            self._client,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
        self._latency = ins.create(telemetry.meter("lungwatch.gateway"), ins.RESPONSE_LATENCY)
        self._tracer = telemetry.tracer("lungwatch.gateway")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        try:
            probe = self.breaker.before_call()
        except CircuitOpenError as exc:
            raise CircuitOpen(
                f"model server failing: {exc}; next attempt in {exc.retry_after:.1f}s",
                retry_after=exc.retry_after,
            ) from exc
        # One span per model-server call: it carries the outcome (an httpx span cut short by
        # the deadline ends without an error status) and, under batching, the batch's size.
        with self._tracer.start_as_current_span(
            "model_server.predict", attributes={"lungwatch.batch.rows": len(rows)}
        ) as span:
            try:
                answer = await self._predict(rows)
            except ModelServerError as exc:
                span.set_attribute("lungwatch.failure_reason", exc.reason)
                self.breaker.record_failure(probe)
                raise
            except BaseException:  # cancelled (client gone) or a bug: no verdict on the server
                if probe:
                    self.breaker.release_probe()
                raise
        self.breaker.record_success(probe)
        return answer

    async def _predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        # The lean path (contract.wire): rows the gateway validated, no pandas on either side.
        payload = orjson.dumps({ROWS_KEY: rows})
        start = time.perf_counter()
        outcome = "error"
        try:
            # httpx's timeouts are per phase (a trickling answer resets the read timer);
            # asyncio.timeout makes `timeout` a deadline for the whole exchange.
            async with asyncio.timeout(self.timeout):
                response = await self._client.post(
                    ROWS_PATH, content=payload, headers=_JSON_HEADERS
                )
            answer = self._parse(response, len(rows))
            outcome = "ok"
            return answer
        except TimeoutError as exc:
            raise ModelTimeout(f"model server did not answer within {self.timeout:g}s") from exc
        except httpx.TimeoutException as exc:
            raise ModelTimeout(f"model server timed out ({type(exc).__name__})") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            raise ModelUnavailable(
                f"model server at {self.base_url} is unreachable ({type(exc).__name__})"
            ) from exc
        finally:
            self._latency.record(time.perf_counter() - start, {"outcome": outcome})

    def _parse(self, response: httpx.Response, n_rows: int) -> ModelAnswer:
        if response.status_code == 503:
            raise ModelUnavailable("model server is not ready (503)")
        if response.status_code == 504:
            raise ModelTimeout("model server gave up on the request (504)")
        if response.status_code != 200:
            # The body is not quoted: MLflow's error text can echo the input (patient data).
            raise ModelBadResponse(f"model server answered HTTP {response.status_code}")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ModelBadResponse("model server answered with invalid JSON") from exc
        predictions = body.get(PROBABILITIES_KEY) if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != n_rows:
            got = len(predictions) if isinstance(predictions, list) else "none"
            raise ModelBadResponse(f"model server returned {got} predictions for {n_rows} rows")
        rows = [_parse_row(item, index) for index, item in enumerate(predictions)]
        version = response.headers.get(MODEL_VERSION_HEADER, "unknown")
        self.last_model_version = version
        return ModelAnswer(rows=rows, model_version=version)

    async def reference(self) -> dict[str, Any] | None:
        """The served model's drift reference (training distribution), None if unavailable."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.get("/reference")
        except (TimeoutError, httpx.HTTPError):
            return None
        if response.status_code != 200:
            return None
        self.last_model_version = response.headers.get(MODEL_VERSION_HEADER, None)
        reference: dict[str, Any] = response.json()
        return reference

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Reachable and the model loaded (MLflow's /ping is 200 only with a model)."""
        try:
            async with asyncio.timeout(self.timeout):
                ping = await self._client.get("/ping")
                if ping.status_code != 200:
                    return False, {"reason": f"model server /ping answered {ping.status_code}"}
                model = await self._client.get("/model")
        except (TimeoutError, httpx.HTTPError) as exc:
            return False, {"reason": f"model server unreachable ({type(exc).__name__})"}
        info = model.json() if model.status_code == 200 else {}
        return True, {"model": info}


_JSON_HEADERS = {"content-type": JSON}


def _parse_row(item: Any, index: int) -> RowPrediction:
    """One row's [p_low, p_medium, p_high]; the class is their argmax, as in the model."""
    if not isinstance(item, list) or len(item) != len(LABELS):
        raise ModelBadResponse(f"prediction {index} is not {len(LABELS)} probabilities")
    try:
        probabilities = (float(item[0]), float(item[1]), float(item[2]))
    except (TypeError, ValueError) as exc:
        raise ModelBadResponse(f"prediction {index} has non-numeric probabilities") from exc
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities) or not math.isclose(
        sum(probabilities), 1.0, abs_tol=1e-6
    ):
        raise ModelBadResponse(f"prediction {index} has invalid probabilities {probabilities}")
    prediction = max(range(len(LABELS)), key=probabilities.__getitem__)
    return RowPrediction(prediction, LABELS[prediction], probabilities)
