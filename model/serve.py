"""The model server: MLflow's own scoring app serving the registered model, instrumented.

    python -m model.serve  # LUNGWATCH_MODEL_SERVER_* (contract.settings), MLFLOW_TRACKING_URI

Adds to MLflow's app (routes /ping, /health, /version, /invocations): OTel server spans that
join the caller's trace (W3C traceparent), a `model.predict` span and the
`model_inference_seconds` histogram around the model call, `/metrics`, `/model` (name,
version, run id of the champion and the challenger), `/reference`, `POST /admin/reload`, and
the version that answered in an `x-model-version` header on every response.
It runs in-process under uvicorn, without the idle `mlflow models serve` parent process.

Two models at once (issue 23): the champion, and optionally a challenger (CHALLENGER_URI),
which a lean-path call asks for with the `x-lungwatch-model-role` header. Both follow their
registry alias (model.reload): a moved alias is fetched, gated, loaded and swapped in while
the old version keeps serving (model.slots).

Hardened against callers other than the gateway: with a shared secret set, every route but
the probes and `/metrics` wants it (`SharedSecretGuard`); both prediction routes check each
feature against its range (`check_features`), and no error body quotes the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from opentelemetry.metrics import Observation
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.features import FEATURE_NAMES, FEATURES, N_FEATURES
from contract.server import run_uvicorn
from contract.settings import ModelServerSettings, env_name, load_settings
from contract.wire import CHALLENGER, CHAMPION, JSON, PROBABILITIES_KEY, ROWS_KEY, ROWS_PATH
from model.candidate import (
    REFUSED_LOAD,
    ModelInfo,
    Refused,
    ResolvedModel,
    load_reference,
    resolve_model_info,
)
from model.registry import tracking_uri
from model.reload import AliasReader, Reloader
from model.slots import ModelSlots, ServedModel
from telemetry import Telemetry, build_telemetry
from telemetry import instruments as ins

log = logging.getLogger("model.serve")

SERVICE_NAME = "lungwatch-model-server"


def load_resolved(resolved: ResolvedModel) -> Any:
    """The pyfunc model, loaded from its downloaded files, which are then removed: the model
    (the ONNX session or the pipeline) is in memory from here on."""
    try:
        return load_pyfunc(resolved.path)
    finally:
        shutil.rmtree(resolved.download_dir, ignore_errors=True)


class CannotServe(RuntimeError):
    """The champion named at start-up cannot be served: a clear exit, not a traceback."""


def resolve_in_child(model_uri: str) -> ResolvedModel:
    """Ask the registry in a forked child, which exits once the model's files are local.

    Reading the sqlite registry imports SQLAlchemy, alembic, mako and cryptography: 51 MB of
    RSS measured, for a lookup made once at start-up. The child pays it and exits, so the
    serving process never holds it (issue 11's RSS target). The wall time is the same as
    doing it here: the child is forked, not started, and inherits what is already imported.
    Call it before any thread starts (telemetry's exporters), as fork requires."""
    import mlflow

    target = tempfile.mkdtemp(prefix="lungwatch-model-")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: resolve, download, answer through the pipe, exit
        os.close(read_end)
        code = 0
        answer: dict[str, Any]
        try:
            mlflow.set_tracking_uri(tracking_uri())
            info = resolve_model_info(model_uri)
            path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=target)
            answer = {"info": asdict(info), "path": path, "reference": load_reference(info)}
        except Exception as exc:  # the parent raises it with this message
            answer = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(orjson.dumps(answer))
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    found: dict[str, Any] = orjson.loads(raw) if raw else {"error": "the registry lookup died"}
    if "error" in found:
        shutil.rmtree(target, ignore_errors=True)
        raise CannotServe(
            f"{env_name(ModelServerSettings, 'model_uri')}: cannot load {model_uri}: "
            f"{found['error']}"
        )
    return ResolvedModel(ModelInfo(**found["info"]), found["path"], found["reference"], target)


def load_pyfunc(model_uri: str) -> Any:
    """The registered model. MLflow's check of its requirements against the installed packages
    is skipped: it costs seconds of every start, and the model server installs from the same
    uv.lock the model was trained with."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)


class Inference:
    """Timing, outcome and row counting of every model call, in one place: the `model.predict`
    span and `model_inference_seconds`, for /invocations and the lean path alike."""

    def __init__(self, telemetry: Telemetry) -> None:
        meter = telemetry.meter("lungwatch.model_server")
        self._seconds = ins.create(meter, ins.MODEL_INFERENCE)
        self._rows = ins.create(meter, ins.MODEL_ROWS)
        self._tracer = telemetry.tracer("lungwatch.model_server")

    @contextlib.contextmanager
    def call(self, rows: int, model: ServedModel) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            "model.predict",
            attributes={
                "lungwatch.batch.rows": rows,
                "lungwatch.model.version": model.info.version,
                "lungwatch.model.role": model.role,
            },
        ):
            start = time.perf_counter()
            ok = False
            try:
                yield
                ok = True
            finally:
                self._seconds.record(time.perf_counter() - start, model.ok if ok else model.error)
                if ok:
                    self._rows.add(rows, model.rows)


def instrument_predict(model: ServedModel, inference: Inference) -> None:
    """Time and trace MLflow's own model call, apart from its parsing and JSON work, after
    checking the input's ranges (a refused input is not a model call)."""
    pyfunc_model = model.pyfunc
    original = pyfunc_model.predict

    # functools.wraps keeps the signature MLflow inspects for a `params` argument.
    @functools.wraps(original)
    def predict(data: Any, *args: Any, **kwargs: Any) -> Any:
        frame = check_frame(data)
        with inference.call(len(frame), model):
            return original(frame, *args, **kwargs)

    pyfunc_model.predict = predict


# Rows every new version must answer before it is swapped in: valid probabilities, one row
# of three per input row (model.onnx_export.random_valid_rows, a fixed seed).
SMOKE_ROWS = 64


def check_answers(risk_model: Any) -> None:
    """Refused (refused_load) unless the loaded model answers like a risk model."""
    from model.onnx_export import random_valid_rows

    rows = random_valid_rows(SMOKE_ROWS, seed=1)
    try:
        proba = np.asarray(risk_model.predict_proba(rows), dtype=np.float64)
    except Exception as exc:
        raise Refused(
            REFUSED_LOAD, f"the loaded model cannot score ({type(exc).__name__})"
        ) from exc
    valid = (
        proba.shape == (SMOKE_ROWS, 3)
        and bool(np.isfinite(proba).all())
        and bool(((proba >= 0) & (proba <= 1)).all())
        and bool(np.allclose(proba.sum(axis=1), 1.0, atol=1e-6))
    )
    if not valid:
        raise Refused(REFUSED_LOAD, "the loaded model's answers are not 3 probabilities a row")


def build_served(resolved: ResolvedModel, role: str, inference: Inference,
                 uri: str, pyfunc_model: Any = None) -> ServedModel:  # fmt: skip
    """Load (unless given), check and instrument one version for one role."""
    try:
        pyfunc_model = pyfunc_model or load_resolved(resolved)
        risk_model = pyfunc_model.unwrap_python_model()
    except Refused:
        raise
    except Exception as exc:  # the files are gone with the download dir: type name only
        raise Refused(REFUSED_LOAD, f"the version does not load ({type(exc).__name__})") from exc
    check_answers(risk_model)
    info = replace(resolved.info, uri=uri, runtime=risk_model.runtime)
    model = ServedModel(role, info, pyfunc_model, risk_model, resolved.reference)
    instrument_predict(model, inference)
    return model


class BadRows(ValueError):
    """Input refused; the message names features and rows, never a value (patient data)."""


_MINIMA = np.array([f.minimum for f in FEATURES], dtype=np.int64)
_MAXIMA = np.array([f.maximum for f in FEATURES], dtype=np.int64)
_SPANS = (_MAXIMA - _MINIMA).view(np.uint64)


def _naming(problem: str, bad: np.ndarray) -> str:
    """'age must be 1..120 (row 3)' for the features and first rows marked in `bad`."""
    features = [FEATURES[i] for i in np.flatnonzero(bad.any(axis=0))]
    rows = np.flatnonzero(bad.any(axis=1))
    shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    names = "; ".join(f"{f.name} {problem} {f.minimum}..{f.maximum}" for f in features)
    return f"{names} (row {shown})"


def check_features(batch: np.ndarray) -> np.ndarray:
    """An (n, 23) array of numbers as int64 when every value is a whole number within its
    feature's range (contract.features, the gateway's own rules), else BadRows. Without it a
    float such as 1e308 would be cast to -2**63 and an age of 987,654 scored."""
    if batch.dtype.kind == "O":  # mixed types, None, integers beyond 64 bits
        numbers = np.vectorize(_is_number, otypes=[bool])(batch)
        if not numbers.all():
            raise BadRows(_naming("must be a number in", ~numbers))
        batch = batch.astype(np.float64)
    kind = batch.dtype.kind
    if kind == "f":
        whole = np.isfinite(batch) & (batch == np.floor(batch))
        if not whole.all():
            raise BadRows(_naming("must be a whole number in", ~whole))
    elif kind == "i":
        # The gateway's case, on every call: one subtraction and one comparison. Below the
        # minimum wraps to a huge unsigned number, so both bounds are one test.
        if (np.subtract(batch, _MINIMA).view(np.uint64) <= _SPANS).all():
            return batch
    elif kind != "u":
        raise BadRows(f"every feature must be a number ({N_FEATURES} per row)")
    outside = (batch < _MINIMA) | (batch > _MAXIMA)
    if outside.any():
        raise BadRows(_naming("must be within", outside))
    return batch.astype(np.int64, copy=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def parse_rows(body: bytes) -> np.ndarray:
    """The lean path's rows as an (n, 23) int64 array; anything else is refused with a reason
    that names the problem but never echoes the values."""
    try:
        rows = orjson.loads(body)[ROWS_KEY]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadRows(f'body must be a JSON object {{"{ROWS_KEY}": [[...], ...]}}') from exc
    # numpy reads [1, true] as [1, 1]: booleans are refused on the bytes (the gateway never
    # sends them), which costs two memchr-speed scans instead of a Python loop over values.
    if b"true" in body or b"false" in body:
        raise BadRows(f"{ROWS_KEY} must be lists of {N_FEATURES} integers")
    try:
        batch = np.asarray(rows)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRows(f"{ROWS_KEY} must be lists of {N_FEATURES} integers") from exc
    if batch.ndim != 2 or batch.shape[1] != N_FEATURES or batch.shape[0] == 0:
        raise BadRows(f"{ROWS_KEY} must be a non-empty list of rows of {N_FEATURES} integers")
    return check_features(batch)


def check_frame(data: Any) -> Any:
    """/invocations' input as parsed without the signature (see replace_invocations): the 23
    feature columns, each numeric and within range, as the int64 frame the signature wants
    (33.0 is 33, as at the gateway)."""
    import pandas as pd

    try:
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    except (TypeError, ValueError) as exc:
        raise BadRows(f"input must be a table with the {N_FEATURES} feature columns") from exc
    missing = [name for name in FEATURE_NAMES if name not in frame.columns]
    if missing:
        raise BadRows(f"missing feature columns: {', '.join(missing)}")
    if frame.empty:
        raise BadRows("input has no rows")
    not_numbers = [n for n in FEATURE_NAMES if frame[n].dtype.kind not in "iufO"]
    if not_numbers:
        raise BadRows(f"features must be numbers: {', '.join(not_numbers)}")
    batch = check_features(frame[list(FEATURE_NAMES)].to_numpy())
    return pd.DataFrame(batch, columns=list(FEATURE_NAMES))


class RowsLane:
    """The gateway's lean path (contract.wire): validated rows in, probabilities out.

    The model call runs on the event loop: with the compiled model it takes microseconds,
    less than a hand-off to a worker thread would cost."""

    def __init__(self, slots: ModelSlots, inference: Inference) -> None:
        self.slots = slots
        self.inference = inference
        self.headers = [(b"content-type", JSON.encode())]

    def answer(self, body: bytes, model: ServedModel) -> tuple[int, bytes]:
        """`model`: the one the call asked for (ModelSlots.for_headers), read once."""
        try:
            batch = parse_rows(body)
        except BadRows as exc:
            return 400, error_body("invalid_rows", str(exc))
        with self.inference.call(len(batch), model):
            proba = model.risk_model.predict_proba(batch)
        return 200, orjson.dumps({PROBABILITIES_KEY: proba}, option=orjson.OPT_SERIALIZE_NUMPY)


# MLflow's own body limit is skipped with its middlewares: 1,024 rows of 23 numbers at most
# (the gateway sends at most LUNGWATCH_GATEWAY_BATCH_MAX_ROWS, 1,024 at the most).
MAX_ROWS_BODY_BYTES = 1024 * 23 * 24


class RowsFastLane:
    """Answers `POST {ROWS_PATH}` before MLflow's middlewares (its request-timeout one runs
    each request in an extra task) and FastAPI's routing: on the lean path those cost the
    model server more CPU than the model. Everything else goes to the app unchanged."""

    def __init__(self, app: ASGIApp, lane: RowsLane) -> None:
        self.app = app
        self.lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ROWS_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        model = self.lane.slots.for_headers(scope["headers"])
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ROWS_BODY_BYTES:
                status, body = 413, error_body("too_large", "body too large")
                break
            if not message.get("more_body", False):
                status, body = self.lane.answer(b"".join(chunks), model)
                break
        headers = [
            *self.lane.headers,
            *model.headers,
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def error_body(error: str, message: str) -> bytes:
    """The model server's own error shape, the gateway's too: a code and a sentence."""
    return orjson.dumps({"error": error, "message": message})


# Kubernetes probes and the gateway's readiness call /ping; Prometheus scrapes /metrics.
# Neither holds the secret, and neither answer says anything about a patient or the model's
# training data (/metrics carries the model's name and version in model_info).
OPEN_PATHS = frozenset({"/ping", "/health", "/metrics"})


class SharedSecretGuard:
    """Refuses (401) every request but OPEN_PATHS without `Authorization: Bearer <secret>`,
    before any route, body or middleware: the gateway holds the secret, other pods on the
    network do not. Compared in constant time."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.expected = f"Bearer {secret}".encode()
        self.refusal = error_body(
            "unauthorized", "this model server answers only the Lungwatch gateway"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or scope["path"] in OPEN_PATHS or self._holds(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(self.refusal)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": self.refusal})

    def _holds(self, scope: Scope) -> bool:
        presented = [value for name, value in scope["headers"] if name == b"authorization"]
        # One header only: two would leave open which of them a proxy or framework reads.
        return len(presented) == 1 and hmac.compare_digest(presented[0], self.expected)


# What /invocations answers instead of MLflow's messages, which quote the input (e.g.
# "Failed to predict data '<the whole frame>'") or the caller's content type.
_INVOCATIONS_REFUSALS = {
    415: "unsupported content type: use application/json, text/csv or parquet, in UTF-8",
}
_INVOCATIONS_DEFAULT = (
    f"input not understood: a table of the {N_FEATURES} feature columns in one of MLflow's "
    "formats (dataframe_split, dataframe_records, instances, inputs; CSV; Parquet)"
)


def replace_invocations(app: FastAPI) -> None:
    """MLflow's /invocations, with its scoring logic unchanged, behind a handler of ours that
    answers every refusal with a message naming the problem, never the input."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) != "/invocations"
    ]

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        data = await request.body()
        content_type = request.headers.get("content-type")
        if not content_type:
            return _refusal(415, "unsupported_media_type", _INVOCATIONS_REFUSALS[415])
        try:
            # No schema for the parsing: with one, MLflow casts every column to the
            # signature's int64 before the model call (33.7 -> 33, 1e308 -> -2**63, true -> 1)
            # and check_frame would see only the result. The model call still enforces it.
            # The champion this request started on (ModelVersionHeader), whatever swaps since.
            model: ServedModel = request.scope["state"][SERVED_MODEL]
            result = await asyncio.to_thread(
                scoring_server.invocations, data, content_type, model.pyfunc, None
            )
        except MlflowException as exc:
            # check_frame's BadRows, raised in the model call, reaches us as the context of
            # the generic MlflowException MLflow raises in its place.
            if isinstance(exc.__context__, BadRows):
                return _refusal(400, "invalid_input", str(exc.__context__))
            status = exc.get_http_status_code()
            if status >= 500:
                log.error("/invocations failed: %s", type(exc).__name__)
                return _refusal(500, "model_error", "the model could not score this input")
            return _refusal(status, "invalid_input", _INVOCATIONS_DEFAULT)
        except Exception as exc:  # the traceback would hold the frame: type name only
            log.error("/invocations failed: %s", type(exc).__name__)
            return _refusal(500, "model_error", "the model could not score this input")
        if result.status != 200:
            message = _INVOCATIONS_REFUSALS.get(result.status, _INVOCATIONS_DEFAULT)
            return _refusal(result.status, "invalid_input", message)
        return Response(result.response, 200, media_type=result.mimetype)


def _refusal(status: int, error: str, message: str) -> Response:
    return Response(error_body(error, message), status, media_type=JSON)


# Where a request's champion, read once when it arrived, waits for the /invocations handler.
SERVED_MODEL = "lungwatch.served_model"


class ModelVersionHeader:
    """Reads the champion once per request and stamps its version and role on the response
    (the lean path stamps its own, RowsFastLane). Plain ASGI: Starlette's `@middleware`
    would add a task and a stream copy to every request."""

    def __init__(self, app: ASGIApp, slots: ModelSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        model = self.slots.champion
        scope.setdefault("state", {})[SERVED_MODEL] = model

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *model.headers]
            await send(message)

        await self.app(scope, receive, send_with_version)


def create_model_server_app(
    resolved: ResolvedModel,
    telemetry: Telemetry,
    *,
    pyfunc_model: Any = None,
    shared_secret: str = "",
    settings: ModelServerSettings | None = None,
) -> FastAPI:
    """The app serving `resolved` as champion. With `settings`, it also follows the aliases
    (settings.model_uri, settings.challenger_uri) from start-up on (model.reload)."""
    from mlflow.pyfunc import scoring_server

    inference = Inference(telemetry)
    uri = settings.model_uri if settings else resolved.info.uri
    try:
        champion = build_served(resolved, CHAMPION, inference, uri, pyfunc_model)
    except Refused as refused:  # at start-up there is no old version to keep serving
        raise RuntimeError(f"cannot serve {uri}: {refused}") from refused
    slots = ModelSlots(champion)
    app: FastAPI = scoring_server.init(champion.pyfunc)
    replace_invocations(app)
    meter = telemetry.meter("lungwatch.model_server")
    reloads = ins.create(meter, ins.MODEL_RELOADS)
    targets = {CHAMPION: uri}
    if settings and settings.challenger_uri:
        targets[CHALLENGER] = settings.challenger_uri
    reloader = Reloader(
        slots,
        targets,
        build=lambda found, role: build_served(found, role, inference, targets[role]),
        count=lambda role, result: reloads.add(1, {"role": role, "result": result}),
        aliases=AliasReader(tracking_uri()),
        interval_seconds=settings.reload_interval_seconds if settings else 0.0,
    )
    app.state.slots = slots
    app.state.reloader = reloader
    rows_lane = RowsLane(slots, inference)

    @app.post(ROWS_PATH, include_in_schema=False)
    async def predict_rows(request: Request) -> Response:
        """The lean path's route, for routing and span names; `RowsLane` answers first."""
        model = slots.for_headers(request.scope["headers"])
        status, body = rows_lane.answer(await request.body(), model)
        return Response(body, status, media_type=JSON)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = telemetry.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    def describe() -> dict[str, Any]:
        served = slots.current
        challenger = served.challenger.describe() if served.challenger else None
        return {**served.champion.describe(), CHALLENGER: challenger}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The champion's name, version, run id, URI and runtime; the challenger's, or null."""
        return describe()

    @app.post("/admin/reload")
    async def reload() -> dict[str, Any]:
        """Ask the registry now (as SIGHUP does), swap what moved, say how each role ended."""
        results = await reloader.check()
        return {**describe(), "results": results}

    @app.get("/reference")
    async def drift_reference(version: str | None = None) -> Response:
        """The training rows' distribution of the champion (or of a served `version`), which
        the gateway measures drift against."""
        found = slots.current.by_version(version) if version else slots.champion
        if found is None or found.reference is None:
            return Response('{"error": "no reference distribution"}', 404)
        return Response(json.dumps(found.reference), media_type="application/json")

    def observe_info(_options: Any) -> Iterable[Observation]:
        return [Observation(1, m.labels()) for m in slots.current.models()]

    ins.create(meter, ins.MODEL_INFO, callbacks=[observe_info])

    if settings is not None:
        tasks: set[asyncio.Task[None]] = set()

        async def follow_aliases() -> None:
            tasks.add(asyncio.create_task(reloader.run()))
            # SIGHUP: check now, as `kill -HUP` is how an operator asks a server to reload.
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.wake)

        app.router.on_startup.append(follow_aliases)

    # add_middleware wraps: the last added runs first. The fast lane goes ahead of MLflow's
    # own middlewares and stamps its own model's version; the version header middleware
    # stamps the champion's on every other response.
    app.add_middleware(ModelVersionHeader, slots=slots)
    app.add_middleware(RowsFastLane, lane=rows_lane)
    if shared_secret:
        # Outermost: a refusal carries no model version and costs no other middleware.
        app.add_middleware(SharedSecretGuard, secret=shared_secret)
    telemetry.instrument_fastapi(
        app, excluded_urls="/ping,/health,/metrics,/version,/model,/reference"
    )
    info = champion.info
    log.info(
        "serving %s version %s (run %s) with %s", info.name, info.version, info.run_id,
        info.runtime,
    )  # fmt: skip
    return app


def serve_one(settings: ModelServerSettings, resolved: ResolvedModel | None = None,
              pyfunc_model: Any = None, worker: int | None = None,
              sock: socket.socket | None = None) -> None:  # fmt: skip
    """One serving process. Telemetry is built here, after any fork: the SDK's export
    threads and its Prometheus registry are per process."""
    _check_secret(settings.shared_secret)
    resolved = resolved or resolve_in_child(settings.model_uri)  # before any thread starts
    telemetry = build_telemetry(SERVICE_NAME)
    try:
        app = create_model_server_app(
            resolved,
            telemetry,
            pyfunc_model=pyfunc_model,
            shared_secret=settings.shared_secret,
            settings=settings,
        )
        if worker is not None:
            # A scrape of the shared port reaches a random worker; each worker's own
            # numbers are on a port of its own, which Prometheus scrapes one by one.
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port + worker, settings.host, telemetry.registry)
        run_uvicorn(app, settings, sock)
    finally:
        telemetry.shutdown()


def serve_workers(settings: ModelServerSettings) -> int:
    """Load the model once, then fork `workers` processes that share one listening socket
    (copy-on-write keeps the model's pages shared). SIGTERM is passed on to every worker; a
    worker that dies is replaced."""
    _check_secret(settings.shared_secret)
    resolved = resolve_in_child(settings.model_uri)
    pyfunc_model = load_resolved(resolved)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)

    def spawn(worker: int) -> int:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve_one(settings, resolved, pyfunc_model, worker, sock)
            except SystemExit as exc:
                code = int(exc.code or 0)
            except BaseException:
                log.exception("model server worker %d failed", worker)
                code = 1
            os._exit(code)
        return pid

    children = {spawn(worker): worker for worker in range(settings.workers)}
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reload(signum: int, frame: Any) -> None:
        # Each worker follows the aliases itself; SIGHUP to the parent asks all of them.
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    log.info("model server: %d workers on %s:%d", settings.workers, settings.host, settings.port)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        worker = children.pop(pid, None)
        if worker is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code != 0
        else:
            log.warning("model server worker %d exited (%d); starting a new one", worker, code)
            children[spawn(worker)] = worker
    return 1 if failed else 0


def _check_secret(secret: str) -> None:
    if 0 < len(secret) < 16:
        # Checked before the model loads; the value is not quoted (logs keep no secret).
        raise ValueError("LUNGWATCH_MODEL_SERVER_SHARED_SECRET: at least 16 characters")


def main() -> int:
    from telemetry.logs import configure_logging

    settings = load_settings(ModelServerSettings, "lungwatch model server")
    configure_logging(settings.log_level)
    try:
        if settings.workers > 1:
            return serve_workers(settings)
        serve_one(settings)
    except CannotServe as exc:
        print(f"lungwatch model server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
