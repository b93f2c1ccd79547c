"""The only way the gateway reaches the model server: one pooled aiohttp session with deadlines.

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

import aiohttp
import orjson
import yarl
from opentelemetry import propagate
from opentelemetry.trace import Span, SpanKind

from api.circuit import CircuitBreaker, CircuitOpenError
from api.versions import version_label
from contract.features import LABELS
from contract.settings import GATEWAY_DEFAULTS
from contract.wire import (
    CHALLENGER,
    CHAMPION,
    JSON,
    MODEL_ROLE_HEADER,
    MODEL_VERSION_HEADER,
    PROBABILITIES_KEY,
    ROWS_KEY,
    ROWS_PATH,
)
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
    role: str = CHAMPION  # who answered: the champion, or the challenger (x-lungwatch-model-role)


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
        secret: str = "",
        role: str = CHAMPION,
        latency: ins.InstrumentSpec = ins.RESPONSE_LATENCY,
        span_name: str = "model_server.predict",
    ) -> None:
        """`secret` is the model server's shared secret, sent on every call. `role`: which of
        the model server's models this client asks for; `latency` and `span_name` tell a
        shadow client's calls apart from the callers' (api.rollout)."""
        self.base_url = base_url.rstrip("/")
        url = yarl.URL(self.base_url)
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker(failure_threshold=0)
        # The version the model server last answered with (x-model-version header).
        self.last_model_version: str | None = None
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._rows_url = url.join(yarl.URL(ROWS_PATH))
        self._url = url
        # Built on first use: an aiohttp session belongs to the event loop it was made in,
        # and create_app runs before uvicorn starts its loop.
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"authorization": f"Bearer {secret}"} if secret else {}
        if role == CHALLENGER:
            self._headers[MODEL_ROLE_HEADER] = CHALLENGER
        self.role = role
        self._span_name = span_name
        # (outcome, version) -> the attribute set: built once, not per call.
        self._latency_attributes: dict[tuple[str, str], dict[str, str]] = {}
        # Attributes of the CLIENT span, fixed per client (HTTP semantic conventions).
        self._span_attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "url.full": str(self._rows_url),
            "server.address": url.host or "",
            "server.port": url.port or 80,
        }
        self._latency = ins.create(telemetry.meter("lungwatch.gateway"), latency)
        self._latency_has_outcome = "outcome" in latency.attributes
        self._tracer = telemetry.tracer("lungwatch.gateway")

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or session.loop is not loop:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections,
                    # Below uvicorn's 5 s keep-alive: a connection the server is about to
                    # close is not reused for a request that would then fail.
                    keepalive_timeout=KEEPALIVE_SECONDS,
                ),
                # The whole exchange is bounded by asyncio.timeout(self.timeout) below;
                # connect has its own, shorter deadline so a dead host fails fast.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                cookie_jar=aiohttp.DummyCookieJar(),  # the model server sets none
                headers=self._headers,
                auto_decompress=False,
            )
        return session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        try:
            probe = self.breaker.before_call()
        except CircuitOpenError as exc:
            raise CircuitOpen(
                f"model server failing: {exc}; next attempt in {exc.retry_after:.1f}s",
                retry_after=exc.retry_after,
            ) from exc
        # The one CLIENT span per model-server call. It spans the whole deadline and carries
        # the outcome (a timeout is an error with its reason), the batch's size, and the W3C
        # context the model server's SERVER span joins.
        with self._tracer.start_as_current_span(
            self._span_name,
            kind=SpanKind.CLIENT,
            attributes={**self._span_attributes, "lungwatch.batch.rows": len(rows)},
        ) as span:
            try:
                answer = await self._predict(rows, span)
            except ModelServerError as exc:
                span.set_attribute("lungwatch.failure_reason", exc.reason)
                span.set_attribute("error.type", exc.reason)
                self.breaker.record_failure(probe)
                raise
            except BaseException:  # cancelled (client gone) or a bug: no verdict on the server
                if probe:
                    self.breaker.release_probe()
                raise
        self.breaker.record_success(probe)
        return answer

    async def _predict(self, rows: Sequence[Sequence[int]], span: Span) -> ModelAnswer:
        # The lean path (contract.wire): rows the gateway validated, no pandas on either side.
        payload = orjson.dumps({ROWS_KEY: rows})
        headers = dict(_JSON_HEADERS)
        propagate.inject(headers)  # traceparent: the current span, this CLIENT span
        start = time.perf_counter()
        outcome = "error"
        version: str | None = None
        try:
            # asyncio.timeout makes `timeout` a deadline for the whole exchange, a trickling
            # answer included.
            async with asyncio.timeout(self.timeout):
                async with self._client().post(
                    self._rows_url, data=payload, headers=headers
                ) as response:
                    status = response.status
                    span.set_attribute("http.response.status_code", status)
                    body = await response.read()
                    version = response.headers.get(MODEL_VERSION_HEADER, "unknown")
                    role = response.headers.get(MODEL_ROLE_HEADER, CHAMPION)
            answer = self._parse(status, body, version, len(rows), role)
            outcome = "ok"
            return answer
        except TimeoutError as exc:
            raise ModelTimeout(f"model server did not answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            # refused, reset, closed mid-answer: the server is not there for this call
            raise ModelUnavailable(
                f"model server at {self.base_url} is unreachable ({type(exc).__name__})"
            ) from exc
        finally:
            self._latency.record(time.perf_counter() - start, self._attributes(outcome, version))

    def _attributes(self, outcome: str, version: str | None) -> dict[str, str]:
        label = version_label(version if outcome == "ok" else None)
        key = (outcome, label)
        attributes = self._latency_attributes.get(key)
        if attributes is None:
            attributes = {"model_version": label}
            if self._latency_has_outcome:
                attributes["outcome"] = outcome
            self._latency_attributes[key] = attributes
        return attributes

    def _parse(
        self, status: int, content: bytes, version: str, n_rows: int, role: str = CHAMPION
    ) -> ModelAnswer:
        if status == 503:
            raise ModelUnavailable("model server is not ready (503)")
        if status == 504:
            raise ModelTimeout("model server gave up on the request (504)")
        if status != 200:
            # The body is not quoted: MLflow's error text can echo the input (patient data).
            raise ModelBadResponse(f"model server answered HTTP {status}")
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ModelBadResponse("model server answered with invalid JSON") from exc
        predictions = body.get(PROBABILITIES_KEY) if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != n_rows:
            got = len(predictions) if isinstance(predictions, list) else "none"
            raise ModelBadResponse(f"model server returned {got} predictions for {n_rows} rows")
        rows = [_parse_row(item, index) for index, item in enumerate(predictions)]
        self.last_model_version = version
        return ModelAnswer(rows=rows, model_version=version, role=role)

    async def _get(self, path: str) -> tuple[int, bytes, str | None]:
        async with asyncio.timeout(self.timeout):
            async with self._client().get(self._url.join(yarl.URL(path))) as response:
                return (
                    response.status,
                    await response.read(),
                    response.headers.get(MODEL_VERSION_HEADER),
                )

    async def reference(self, version: str | None = None) -> dict[str, Any] | None:
        """The drift reference (training distribution) of the champion, or of a served
        `version`; None if unavailable."""
        path = "/reference" if version is None else f"/reference?version={version}"
        try:
            status, body, answered = await self._get(path)
        except (TimeoutError, aiohttp.ClientError):
            return None
        if status != 200:
            return None
        if version is None:
            self.last_model_version = answered
        reference: dict[str, Any] = orjson.loads(body)
        return reference

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Reachable and the model loaded (MLflow's /ping is 200 only with a model)."""
        try:
            status, _, _ = await self._get("/ping")
            if status != 200:
                return False, {"reason": f"model server /ping answered {status}"}
            status, body, _ = await self._get("/model")
        except (TimeoutError, aiohttp.ClientError) as exc:
            return False, {"reason": f"model server unreachable ({type(exc).__name__})"}
        if status == 401:
            # /ping is open to probes; /model is not: a wrong or missing shared secret shows
            # here, and every prediction would fail with 502.
            return False, {"reason": "model server refused the gateway's shared secret (401)"}
        info = orjson.loads(body) if status == 200 else {}
        return True, {"model": info}


_JSON_HEADERS = {"content-type": JSON}
KEEPALIVE_SECONDS = 4.0


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
