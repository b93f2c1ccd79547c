"""The model server: MLflow's own scoring app serving the registered model, instrumented.

    python -m model.serve  # LUNGWATCH_MODEL_SERVER_* (contract.settings), MLFLOW_TRACKING_URI

Adds to MLflow's app (routes /ping, /health, /version, /invocations): OTel server spans that
join the caller's trace (W3C traceparent), a `model.predict` span and the
`model_inference_seconds` histogram around the model call, `/metrics`, `/model` (name,
version, run id), and the served version in an `x-model-version` header on every response.
It runs in-process under uvicorn, without the idle `mlflow models serve` parent process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from opentelemetry.metrics import Observation
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.features import N_FEATURES
from contract.server import run_uvicorn
from contract.settings import ModelServerSettings
from contract.wire import JSON, MODEL_VERSION_HEADER, PROBABILITIES_KEY, ROWS_KEY, ROWS_PATH
from model.registry import REFERENCE_ARTIFACT, tracking_uri
from telemetry import Telemetry, build_telemetry
from telemetry import instruments as ins

log = logging.getLogger("model.serve")

SERVICE_NAME = "lungwatch-model-server"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    run_id: str
    uri: str
    runtime: str = "unknown"  # what computes the predictions: onnx or sklearn


def resolve_model_info(uri: str) -> ModelInfo:
    """Name/version/run of a `models:/name@alias` or `models:/name/version` URI."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        client = MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.split("/", 1)
            mv = client.get_model_version(name, version)
        return ModelInfo(name=name, version=str(mv.version), run_id=mv.run_id or "", uri=uri)
    return ModelInfo(name=uri, version="unregistered", run_id="", uri=uri)


def load_reference(info: ModelInfo) -> dict[str, Any] | None:
    """The drift reference logged by training in the model's run (None for other models)."""
    if not info.run_id:
        return None
    from mlflow.artifacts import load_dict

    try:
        reference: dict[str, Any] = load_dict(f"runs:/{info.run_id}/{REFERENCE_ARTIFACT}")
    except Exception:  # an older model without one still serves; drift is just not measured
        log.warning("model run %s has no drift reference", info.run_id)
        return None
    return reference


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
    def call(self, rows: int) -> Iterator[None]:
        with self._tracer.start_as_current_span(
            "model.predict", attributes={"lungwatch.batch.rows": rows}
        ):
            start = time.perf_counter()
            outcome = _ERROR
            try:
                yield
                outcome = _OK
            finally:
                self._seconds.record(time.perf_counter() - start, outcome)
                if outcome is _OK:
                    self._rows.add(rows)


# Attribute sets built once: the SDK would otherwise hash a new dict on every record.
_OK = {"outcome": "ok"}
_ERROR = {"outcome": "error"}


def instrument_predict(pyfunc_model: Any, inference: Inference) -> None:
    """Time and trace MLflow's own model call, apart from its parsing and JSON work."""
    original = pyfunc_model.predict

    # functools.wraps keeps the signature MLflow inspects for a `params` argument.
    @functools.wraps(original)
    def predict(data: Any, *args: Any, **kwargs: Any) -> Any:
        with inference.call(len(data) if hasattr(data, "__len__") else 1):
            return original(data, *args, **kwargs)

    pyfunc_model.predict = predict


class BadRows(ValueError):
    pass


def parse_rows(body: bytes) -> np.ndarray:
    """The lean path's rows as an (n, 23) array; anything else is refused with a reason that
    names the problem but never echoes the values."""
    try:
        rows = orjson.loads(body)[ROWS_KEY]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadRows(f'body must be a JSON object {{"{ROWS_KEY}": [[...], ...]}}') from exc
    try:
        batch = np.asarray(rows, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRows(f"{ROWS_KEY} must be lists of {N_FEATURES} integers") from exc
    if batch.ndim != 2 or batch.shape[1] != N_FEATURES or batch.shape[0] == 0:
        raise BadRows(f"{ROWS_KEY} must be a non-empty list of rows of {N_FEATURES} integers")
    return batch


class RowsLane:
    """The gateway's lean path (contract.wire): validated rows in, probabilities out.

    The model call runs on the event loop: with the compiled model it takes microseconds,
    less than a hand-off to a worker thread would cost."""

    def __init__(self, risk_model: Any, inference: Inference) -> None:
        self.risk_model = risk_model
        self.inference = inference
        self.headers = [(b"content-type", JSON.encode())]

    def answer(self, body: bytes) -> tuple[int, bytes]:
        try:
            batch = parse_rows(body)
        except BadRows as exc:
            return 400, orjson.dumps({"error": str(exc)})
        with self.inference.call(len(batch)):
            proba = self.risk_model.predict_proba(batch)
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
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_ROWS_BODY_BYTES:
                status, body = 413, b'{"error": "body too large"}'
                break
            if not message.get("more_body", False):
                status, body = self.lane.answer(b"".join(chunks))
                break
        headers = [*self.lane.headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ModelVersionHeader:
    """Stamps the served version on every response. Plain ASGI: Starlette's `@middleware`
    would add a task and a stream copy to every request."""

    def __init__(self, app: ASGIApp, version: str) -> None:
        self.app = app
        self.header = (MODEL_VERSION_HEADER.encode(), version.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_version)


def create_model_server_app(
    model_uri: str, telemetry: Telemetry, *, pyfunc_model: Any = None
) -> FastAPI:
    import mlflow
    from mlflow.pyfunc import scoring_server

    # The same default store as training, so `make run` finds what it registered.
    mlflow.set_tracking_uri(tracking_uri())
    info = resolve_model_info(model_uri)
    if pyfunc_model is None:
        pyfunc_model = load_pyfunc(model_uri)
    risk_model = pyfunc_model.unwrap_python_model()
    info = replace(info, runtime=risk_model.runtime)
    inference = Inference(telemetry)
    instrument_predict(pyfunc_model, inference)
    app: FastAPI = scoring_server.init(pyfunc_model)

    rows_lane = RowsLane(risk_model, inference)

    @app.post(ROWS_PATH, include_in_schema=False)
    async def predict_rows(request: Request) -> Response:
        """The lean path's route, for routing and span names; `RowsLane` answers first."""
        status, body = rows_lane.answer(await request.body())
        return Response(body, status, media_type=JSON)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = telemetry.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/model")
    async def model() -> dict[str, str]:
        return asdict(info)

    reference = load_reference(info)

    @app.get("/reference")
    async def drift_reference() -> Response:
        """The training rows' distribution the gateway measures drift against."""
        if reference is None:
            return Response('{"error": "no reference distribution"}', 404)
        return Response(json.dumps(reference), media_type="application/json")

    meter = telemetry.meter("lungwatch.model_server")
    labels = {
        "model_name": info.name,
        "model_version": info.version,
        "run_id": info.run_id,
        "runtime": info.runtime,
    }
    ins.create(meter, ins.MODEL_INFO, callbacks=[lambda _options: [Observation(1, labels)]])

    # add_middleware wraps: the last added runs first. The fast lane goes ahead of MLflow's
    # own middlewares; the version header is stamped outside it, on every response alike.
    app.add_middleware(RowsFastLane, lane=rows_lane)
    app.add_middleware(ModelVersionHeader, version=info.version)
    telemetry.instrument_fastapi(
        app, excluded_urls="/ping,/health,/metrics,/version,/model,/reference"
    )
    log.info(
        "serving %s version %s (run %s) with %s", info.name, info.version, info.run_id,
        info.runtime,
    )  # fmt: skip
    return app


def serve_one(settings: ModelServerSettings, pyfunc_model: Any = None, worker: int | None = None,
              sock: socket.socket | None = None) -> None:  # fmt: skip
    """One serving process. Telemetry is built here, after any fork: the SDK's export
    threads and its Prometheus registry are per process."""
    telemetry = build_telemetry(SERVICE_NAME)
    try:
        app = create_model_server_app(settings.model_uri, telemetry, pyfunc_model=pyfunc_model)
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
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    pyfunc_model = load_pyfunc(settings.model_uri)
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
                serve_one(settings, pyfunc_model, worker, sock)
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

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
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


def main() -> int:
    from telemetry.logs import configure_logging

    settings = ModelServerSettings()
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return serve_workers(settings)
    serve_one(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
