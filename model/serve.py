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
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from opentelemetry.metrics import Observation

from contract.server import run_uvicorn
from contract.settings import ModelServerSettings
from contract.wire import MODEL_VERSION_HEADER
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


def instrument_predict(pyfunc_model: Any, telemetry: Telemetry) -> None:
    """Time and trace the model call itself, apart from MLflow's parsing and JSON work."""
    meter = telemetry.meter("lungwatch.model_server")
    inference = ins.create(meter, ins.MODEL_INFERENCE)
    rows_counter = ins.create(meter, ins.MODEL_ROWS)
    tracer = telemetry.tracer("lungwatch.model_server")
    original = pyfunc_model.predict

    # functools.wraps keeps the signature MLflow inspects for a `params` argument.
    @functools.wraps(original)
    def predict(data: Any, *args: Any, **kwargs: Any) -> Any:
        rows = len(data) if hasattr(data, "__len__") else 1
        with tracer.start_as_current_span("model.predict") as span:
            span.set_attribute("lungwatch.batch.rows", rows)
            start = time.perf_counter()
            outcome = "error"
            try:
                result = original(data, *args, **kwargs)
                outcome = "ok"
                return result
            finally:
                inference.record(time.perf_counter() - start, {"outcome": outcome})
                if outcome == "ok":
                    rows_counter.add(rows)

    pyfunc_model.predict = predict


def create_model_server_app(
    model_uri: str, telemetry: Telemetry, *, pyfunc_model: Any = None
) -> FastAPI:
    import mlflow
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    # The same default store as training, so `make run` finds what it registered.
    mlflow.set_tracking_uri(tracking_uri())
    info = resolve_model_info(model_uri)
    if pyfunc_model is None:
        pyfunc_model = mlflow.pyfunc.load_model(model_uri)
    instrument_predict(pyfunc_model, telemetry)
    app: FastAPI = scoring_server.init(pyfunc_model)

    @app.middleware("http")
    async def model_version_header(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers[MODEL_VERSION_HEADER] = info.version
        return response

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
    labels = {"model_name": info.name, "model_version": info.version, "run_id": info.run_id}
    ins.create(meter, ins.MODEL_INFO, callbacks=[lambda _options: [Observation(1, labels)]])

    telemetry.instrument_fastapi(
        app, excluded_urls="/ping,/health,/metrics,/version,/model,/reference"
    )
    log.info("serving %s version %s (run %s)", info.name, info.version, info.run_id)
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
        run_uvicorn(app, settings.host, settings.port, settings.graceful_shutdown_seconds, sock)
    finally:
        telemetry.shutdown()


def serve_workers(settings: ModelServerSettings) -> int:
    """Load the model once, then fork `workers` processes that share one listening socket
    (copy-on-write keeps the model's pages shared). SIGTERM is passed on to every worker; a
    worker that dies is replaced."""
    import mlflow
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri())
    pyfunc_model = mlflow.pyfunc.load_model(settings.model_uri)
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
