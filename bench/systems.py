"""The systems the benchmark compares, their processes, and what they cost the machine.

(1) bare `mlflow models serve`; (2) BentoML with adaptive batching serving the registered ONNX
file on onnxruntime and (3) the registered scikit-learn pipeline, each in the bench's own
venv; (4) the full Lungwatch path with telemetry exported over OTLP, (5) the same with the
OTel SDK disabled, (6) the same with micro-batching off, (7) full telemetry except that only
10 % of traces are sampled; (8) and (9) Lungwatch with a challenger beside the champion,
shadowed at 100 % and answering a 50 % canary, and (10) Lungwatch while @champion is moved to
another version and back under load (issue 23); (11) Lungwatch without issue 24's per-row
model-quality work. Every system serves the one model trained at
the start of the run (the rollout systems also a second one, trained with another seed), and
its cold start runs from its first process's start to its first successful prediction.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.artifacts import ModelFiles
from contract.settings import CHALLENGER_ALIAS, REGISTERED_MODEL_NAME
from devtools.procs import (
    PYTHON,
    REPO_ROOT,
    VENV_BIN,
    ManagedProcess,
    TrainedModel,
    base_env,
    free_port,
    gateway,
    model_server,
)

Kind = Literal["mlflow", "bentoml", "lungwatch"]
KINDS: tuple[Kind, ...] = ("mlflow", "bentoml", "lungwatch")
# Which loads a system runs: the plan's, a shorter set (bench.__main__.SHORT_*) for the
# rollout systems that only compare against (4), or the hot swap's one open-loop run.
Loads = Literal["all", "short", "hot_swap"]
CHALLENGER_URI = f"models:/{REGISTERED_MODEL_NAME}@{CHALLENGER_ALIAS}"
SERVICE_FILE = REPO_ROOT / "bench" / "bentoml_service.py"
# How often a starting system is asked for its first prediction: fine enough for cold starts
# of about a second, coarse enough not to slow the start it measures.
POLL_INTERVAL_S = 0.02
COLD_START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class SystemSpec:
    key: str
    label: str
    kind: Kind
    env: Mapping[str, str] = field(default_factory=dict)
    otlp: bool = False
    service: str = ""  # bentoml: the service class in bench/bentoml_service.py
    loads: Loads = "all"

    @property
    def needs_second_version(self) -> bool:
        """Whether the registry must hold a second version: a challenger to serve, or the
        version @champion is moved to."""
        return self.loads == "hot_swap" or "LUNGWATCH_MODEL_SERVER_CHALLENGER_URI" in self.env

    @property
    def rollout_mode(self) -> str:
        return self.env.get("LUNGWATCH_GATEWAY_ROLLOUT_MODE", "off")


SYSTEMS: tuple[SystemSpec, ...] = (
    SystemSpec("mlflow", "(1) bare mlflow models serve", "mlflow"),
    SystemSpec("bentoml_onnx", "(2) BentoML, batching, ONNX", "bentoml", service="OnnxForest"),
    SystemSpec(
        "bentoml_sklearn",
        "(3) BentoML, batching, scikit-learn",
        "bentoml",
        service="SklearnForest",
    ),
    SystemSpec("lungwatch", "(4) Lungwatch, full telemetry", "lungwatch", otlp=True),
    SystemSpec(
        "telemetry_off",
        "(5) Lungwatch, telemetry off",
        "lungwatch",
        # The SDK hands out no-op tracers and meters; nothing is exported.
        env={"OTEL_SDK_DISABLED": "true"},
    ),
    SystemSpec(
        "batching_off",
        "(6) Lungwatch, batching off",
        "lungwatch",
        env={"LUNGWATCH_GATEWAY_BATCHING": "false"},
        otlp=True,
    ),
    SystemSpec(
        "sampled",
        "(7) Lungwatch, every metric, 10 % of traces",
        "lungwatch",
        # Head sampling as a busy deployment would set it: what full telemetry costs beyond
        # this is the price of the other 90 % of traces (not a target: (4) is).
        env={"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        otlp=True,
    ),
    # Issue 23: (4) with a challenger (another seed's forest) served beside the champion by
    # the same model server; both settings reach both processes, each reads its own prefix.
    SystemSpec(
        "shadow",
        "(8) Lungwatch + shadow 100 %",
        "lungwatch",
        env={
            "LUNGWATCH_MODEL_SERVER_CHALLENGER_URI": CHALLENGER_URI,
            "LUNGWATCH_GATEWAY_ROLLOUT_MODE": "shadow",
            "LUNGWATCH_GATEWAY_ROLLOUT_PERCENT": "100",
        },
        otlp=True,
        loads="short",
    ),
    SystemSpec(
        "canary",
        "(9) Lungwatch + canary 50 %",
        "lungwatch",
        env={
            "LUNGWATCH_MODEL_SERVER_CHALLENGER_URI": CHALLENGER_URI,
            "LUNGWATCH_GATEWAY_ROLLOUT_MODE": "canary",
            "LUNGWATCH_GATEWAY_ROLLOUT_PERCENT": "50",
        },
        otlp=True,
        loads="short",
    ),
    SystemSpec(
        "hot_swap",
        "(10) Lungwatch, @champion moved and back under 200 req/s",
        "lungwatch",
        # A 1 s registry poll: the swap starts within a second of the alias move.
        env={"LUNGWATCH_MODEL_SERVER_RELOAD_INTERVAL_SECONDS": "1"},
        otlp=True,
        loads="hot_swap",
    ),
    # Issue 24: (4) without the per-row label-free estimate and data-quality counting; (4)
    # over this is what that work costs (target: at least 0.95 at 8 connections).
    SystemSpec(
        "quality_off",
        "(11) Lungwatch, model-quality monitoring off",
        "lungwatch",
        env={"LUNGWATCH_GATEWAY_QUALITY_MONITORING": "false"},
        otlp=True,
        loads="short",
    ),
)


@dataclass(frozen=True)
class Serving:
    """What every start needs: the registered model, its files, the BentoML venv."""

    model: TrainedModel
    files: ModelFiles
    bentoml_venv: Path | None  # None when no BentoML system is benchmarked
    # The second version (@challenger), when a benchmarked system needs one.
    challenger: TrainedModel | None = None


def request_body(kind: Kind, features: Sequence[int], columns: Sequence[str]) -> str:
    """One single-row request in the shape each system's clients send."""
    if kind == "mlflow":
        return json.dumps({"dataframe_split": {"columns": list(columns), "data": [list(features)]}})
    if kind == "bentoml":
        # the batchable API's one argument, a 2-D array: one row per request
        return json.dumps({"features": [list(features)]})
    return json.dumps({"features": list(features)})


@dataclass
class RunningSystem:
    spec: SystemSpec
    url: str  # the prediction URL the load generator posts to
    processes: list[ManagedProcess]
    cold_start_s: float  # first process started -> first successful prediction
    first_answer: Any  # the body of that prediction
    started_at: float = 0.0  # perf_counter when its first process started

    @property
    def server_pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    @property
    def model_server_url(self) -> str:
        """Lungwatch's model server (the hot swap asks it which version it serves)."""
        for proc in self.processes:
            if proc.name.endswith("model-server"):
                return proc.url
        raise RuntimeError(f"{self.spec.key} runs no Lungwatch model server")

    @property
    def gateway_url(self) -> str:
        return self.url.removesuffix("/predict")

    def stop(self) -> None:
        # the gateway first, so it never reports a missing model server while stopping
        for proc in reversed(self.processes):
            proc.stop()


def start_system(
    spec: SystemSpec,
    serving: Serving,
    log_dir: Path,
    otlp_endpoint: str | None,
    first_body: str,
) -> RunningSystem:
    """Start a system and wait for its first successful prediction of `first_body`."""
    starters = {"mlflow": _start_mlflow, "bentoml": _start_bentoml, "lungwatch": _start_lungwatch}
    began = time.perf_counter()
    processes: list[ManagedProcess] = []
    try:
        url = starters[spec.kind](spec, serving, log_dir, otlp_endpoint, processes)
        answer = first_prediction(url, first_body, processes, COLD_START_TIMEOUT_S)
    except BaseException:
        for proc in reversed(processes):
            proc.stop()
        raise
    return RunningSystem(spec, url, processes, time.perf_counter() - began, answer, began)


def launch(proc: ManagedProcess, processes: list[ManagedProcess]) -> ManagedProcess:
    """Start without ManagedProcess's readiness wait (0.2 s polls): the caller polls finer."""
    proc.ready_url = None
    processes.append(proc.start())
    return proc


def wait_for(
    check: Callable[[], bool], processes: Sequence[ManagedProcess], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in processes:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(POLL_INTERVAL_S)
    tails = "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in processes)
    raise RuntimeError(f"{what} did not happen within {timeout:g} s\n{tails}")


def first_prediction(
    url: str, body: str, processes: Sequence[ManagedProcess], timeout: float
) -> Any:
    answer: list[Any] = []
    last: list[str] = []

    def predicted() -> bool:
        response = httpx.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=30
        )
        if response.status_code != 200:
            last[:] = [f"{response.status_code} {response.text[:300]}"]
            return False
        answer.append(response.json())
        return True

    wait_for(predicted, processes, timeout, f"a first prediction from {url} ({last})")
    return answer[0]


def _start_mlflow(
    spec: SystemSpec,
    serving: Serving,
    log_dir: Path,
    otlp_endpoint: str | None,
    processes: list[ManagedProcess],
) -> str:
    model = serving.model
    port = free_port()
    launch(
        ManagedProcess(
            "mlflow-serve",
            [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model.model_uri,
             "--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"],
            env=base_env(MLFLOW_TRACKING_URI=model.tracking_uri),
            log_dir=log_dir,
            cwd=model.workdir,
        ),
        processes,
    )  # fmt: skip
    return f"http://127.0.0.1:{port}/invocations"


def _start_bentoml(
    spec: SystemSpec,
    serving: Serving,
    log_dir: Path,
    otlp_endpoint: str | None,
    processes: list[ManagedProcess],
) -> str:
    if serving.bentoml_venv is None:
        raise RuntimeError(f"{spec.key} needs the BentoML venv")
    workdir = log_dir / f"{spec.key}-service"
    workdir.mkdir(parents=True, exist_ok=True)
    # A plain service file served from source, as `bentoml serve module:Class` documents;
    # its own directory, so BentoML imports nothing else of this repository.
    shutil.copy(SERVICE_FILE, workdir / SERVICE_FILE.name)
    port = free_port()
    env = base_env(
        BENCH_ONNX_PATH=str(serving.files.onnx),
        BENCH_PIPELINE_PATH=str(serving.files.pipeline),
        BENCH_CODE_PATH=str(serving.files.code or ""),
        BENTOML_HOME=str(log_dir / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="true",
        PATH=f"{serving.bentoml_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("PYTHONPATH", None)  # nothing of the project's may leak into BentoML's venv
    env.pop("VIRTUAL_ENV", None)
    launch(
        ManagedProcess(
            f"{spec.key}-bentoml",
            [str(serving.bentoml_venv / "bin" / "bentoml"), "serve",
             f"{SERVICE_FILE.stem}:{spec.service}", "--working-dir", str(workdir),
             "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            log_dir=log_dir,
            cwd=workdir,
        ),
        processes,
    )  # fmt: skip
    return f"http://127.0.0.1:{port}/predict"


def _start_lungwatch(
    spec: SystemSpec,
    serving: Serving,
    log_dir: Path,
    otlp_endpoint: str | None,
    processes: list[ManagedProcess],
) -> str:
    telemetry_env = dict(spec.env)
    if spec.otlp:
        if otlp_endpoint is None:
            raise RuntimeError(f"{spec.key} exports over OTLP but no receiver runs")
        telemetry_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    # With several model-server workers, worker i serves /metrics on this + i: not the fixed
    # default, which a `make run` or a test on this machine may hold.
    server = launch(
        model_server(
            serving.model,
            log_dir,
            name=f"{spec.key}-model-server",
            extra_env=telemetry_env,
            LUNGWATCH_MODEL_SERVER_METRICS_PORT=str(free_port()),
        ),
        processes,
    )
    # As `make run` does: the gateway starts once the model server answers.
    wait_for(
        lambda: httpx.get(f"{server.url}/ping", timeout=1).status_code == 200,
        processes,
        COLD_START_TIMEOUT_S,
        f"{server.name} ready",
    )
    front = launch(
        gateway(server.url, log_dir, name=f"{spec.key}-gateway", extra_env=telemetry_env),
        processes,
    )
    return f"{front.url}/predict"


def wait_for_challenger(system: RunningSystem, version: str) -> float:
    """Seconds from the system's first process start until its model server serves `version`
    as challenger: it loads the challenger after start-up (fetched and gated in a child), and
    a run measured before then would shadow nothing and route no canary."""

    def served() -> bool:
        body = httpx.get(f"{system.model_server_url}/model", timeout=5).json()
        challenger = body.get("challenger") or {}
        return str(challenger.get("version")) == version

    # polled at 0.25 s, not the cold start's 20 ms: this waits on a child process's import
    deadline = time.monotonic() + COLD_START_TIMEOUT_S
    while not served():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{system.spec.key}'s model server did not serve challenger v{version} within "
                f"{COLD_START_TIMEOUT_S:g} s\n{system.processes[0].log_tail()}"
            )
        for proc in system.processes:
            if not proc.running:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        time.sleep(0.25)
    return time.perf_counter() - system.started_at


# What the gateway's rollout did with a run's requests, from its own counters (issue 23's
# names): shadowed rows by outcome, and canary requests the champion answered instead.
ROLLOUT_SAMPLES = {
    "gateway_shadow_rows_total": "shadow_",  # + the outcome label
    "gateway_canary_fallbacks_total": "canary_fallbacks",
    "gateway_shadow_queue_rows": "shadow_queue_rows",
}


def rollout_counters(gateway_url: str) -> dict[str, float]:
    """The gateway's rollout counters now, read from its /metrics (between runs, never
    during one: nothing scrapes the systems while they are measured)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            prefix = ROLLOUT_SAMPLES.get(sample.name)
            if prefix is None:
                continue
            name = prefix + sample.labels.get("outcome", "") if prefix.endswith("_") else prefix
            out[name] = out.get(name, 0.0) + sample.value
    return out


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """What the counters gained over a run; the queue gauge as it was at the end."""
    return {
        name: value if name == "shadow_queue_rows" else value - before.get(name, 0.0)
        for name, value in after.items()
    }


class Sink:
    """The discarding OTLP receiver (bench/sink.py) in its own process."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.process = ManagedProcess(
            "otlp-sink",
            [PYTHON, "-m", "bench.sink", str(self.port)],
            env=base_env(),
            log_dir=log_dir,
            ready_url=f"http://127.0.0.1:{self.port}/stats",
            ready_timeout=30,
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = httpx.get(self.url + "/stats", timeout=5).json()
        return counts

    def stop(self) -> None:
        self.process.stop()
