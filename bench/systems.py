"""The four systems the benchmark compares, their processes, and what they cost the machine.

(1) bare `mlflow models serve`, (2) the full Lungwatch path with telemetry exported over OTLP,
(3) the same with the OTel SDK disabled, (4) the same with micro-batching off. Every system
serves the one model trained at the start of the run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The venv's bin, unresolved: `mlflow models serve` shells out to a bare `uvicorn` on PATH.
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**overrides: str) -> dict[str, str]:
    """A child's environment: repo importable, venv first on PATH, no stray OTel/Lungwatch
    settings from the caller's shell (they would silently change what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUNGWATCH_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # a server that is still starting refuses connections
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not happen within {timeout:g}s (last error: {last})")


class Process:
    """A child with its log in a file (never a pipe a busy server could fill and block on)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, url: str, timeout: float = 120.0) -> None:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}")
            return httpx.get(url, timeout=2.0).status_code == 200

        try:
            wait_until(ready, timeout, f"{self.name} ready at {url}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- {self.name} log ---\n{self.log_tail()}") from None

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                # the mlflow CLI does not always pass SIGTERM on; kill what is left of the tree
                for child in _tree([self.popen.pid])[1:]:
                    child.kill()
                self.popen.kill()
                self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _tree(pids: Sequence[int]) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs.append(root)
            procs.extend(root.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return procs


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU of the process trees under pids (uvicorn workers are children)."""
    total = 0.0
    for proc in _tree(pids):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def memory(pids: Sequence[int]) -> dict[str, int]:
    """RSS summed over the trees (what the target uses), and PSS, which counts pages shared
    by forked workers once, so the reader can see how much of the RSS sum is sharing."""
    rss = pss = 0
    count = 0
    for proc in _tree(pids):
        try:
            rss += proc.memory_info().rss
            pss += getattr(proc.memory_full_info(), "pss", 0)
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"rss_bytes": rss, "pss_bytes": pss, "processes": count}


@dataclass(frozen=True)
class TrainedModel:
    tracking_uri: str
    model_uri: str
    version: str
    workdir: Path


def train_model(workdir: Path) -> TrainedModel:
    """Train and register the default model (the seed's forest) into a fresh sqlite store.

    cwd=workdir because MLflow's sqlite store puts artifacts under ./mlruns of the cwd.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir / 'mlruns.db'}"
    done = subprocess.run(
        [PYTHON, "-m", "model.train"],
        env=base_env(MLFLOW_TRACKING_URI=tracking_uri),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"training failed:\n{done.stdout}\n{done.stderr}")
    result = json.loads(done.stdout[done.stdout.index("{") :])
    return TrainedModel(tracking_uri, result["model_uri"], str(result["version"]), workdir)


Kind = Literal["mlflow", "lungwatch"]


@dataclass(frozen=True)
class SystemSpec:
    key: str
    label: str
    kind: Kind
    env: Mapping[str, str] = field(default_factory=dict)
    otlp: bool = False


SYSTEMS: tuple[SystemSpec, ...] = (
    SystemSpec("mlflow", "(1) bare mlflow models serve", "mlflow"),
    SystemSpec("lungwatch", "(2) Lungwatch, full telemetry", "lungwatch", otlp=True),
    SystemSpec(
        "telemetry_off",
        "(3) Lungwatch, telemetry off",
        "lungwatch",
        # The SDK hands out no-op tracers and meters; nothing is exported.
        env={"OTEL_SDK_DISABLED": "true"},
    ),
    SystemSpec(
        "batching_off",
        "(4) Lungwatch, batching off",
        "lungwatch",
        env={"LUNGWATCH_BATCHING": "false"},
        otlp=True,
    ),
)


def request_body(kind: Kind, features: Sequence[int], columns: Sequence[str]) -> str:
    """One single-row request in the shape each system's clients send."""
    if kind == "mlflow":
        return json.dumps({"dataframe_split": {"columns": list(columns), "data": [list(features)]}})
    return json.dumps({"features": list(features)})


@dataclass
class RunningSystem:
    spec: SystemSpec
    url: str  # the prediction URL the load generator posts to
    processes: list[Process]
    startup_s: float

    @property
    def server_pids(self) -> list[int]:
        return [p.popen.pid for p in self.processes]

    def check(self, body: str) -> dict[str, Any]:
        """One request through the system; fail early if it does not predict."""
        response = httpx.post(
            self.url, content=body, headers={"content-type": "application/json"}, timeout=30
        )
        if response.status_code != 200:
            raise RuntimeError(f"{self.spec.key}: {response.status_code} {response.text[:500]}")
        answer: dict[str, Any] = response.json()
        return answer

    def stop(self) -> None:
        # the gateway first, so it never reports a missing model server while stopping
        for proc in reversed(self.processes):
            proc.stop()


def start_system(
    spec: SystemSpec, model: TrainedModel, log_dir: Path, otlp_endpoint: str | None
) -> RunningSystem:
    began = time.perf_counter()
    if spec.kind == "mlflow":
        port = free_port()
        proc = Process(
            "mlflow-serve",
            [
                str(VENV_BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                model.model_uri,
                "--env-manager",
                "local",
                "-p",
                str(port),
                "--host",
                "127.0.0.1",
            ],
            base_env(MLFLOW_TRACKING_URI=model.tracking_uri),
            log_dir,
            cwd=model.workdir,
        )
        try:
            proc.wait_ready(f"http://127.0.0.1:{port}/ping")
        except Exception:
            proc.stop()
            raise
        return RunningSystem(
            spec, f"http://127.0.0.1:{port}/invocations", [proc], time.perf_counter() - began
        )

    telemetry_env = dict(spec.env)
    if spec.otlp:
        if otlp_endpoint is None:
            raise RuntimeError(f"{spec.key} exports over OTLP but no receiver runs")
        telemetry_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    model_port, gateway_port = free_port(), free_port()
    model_server = Process(
        f"{spec.key}-model-server",
        [PYTHON, "-m", "model.serve"],
        base_env(
            **{
                # with LUNGWATCH_MODEL_WORKERS > 1 worker i serves /metrics on this + i; not
                # the fixed default, which a `make run` or a test on this machine may hold
                "LUNGWATCH_MODEL_METRICS_PORT": str(free_port()),
                **telemetry_env,
                "MLFLOW_TRACKING_URI": model.tracking_uri,
                "LUNGWATCH_MODEL_URI": model.model_uri,
                "LUNGWATCH_MODEL_PORT": str(model_port),
                "OTEL_SERVICE_NAME": "lungwatch-model-server",
            }
        ),
        log_dir,
        cwd=model.workdir,
    )
    processes = [model_server]
    try:
        model_server.wait_ready(f"http://127.0.0.1:{model_port}/ping")
        gateway = Process(
            f"{spec.key}-gateway",
            [PYTHON, "-m", "api"],
            base_env(
                **{
                    **telemetry_env,
                    "LUNGWATCH_PORT": str(gateway_port),
                    "LUNGWATCH_MODEL_SERVER_URL": f"http://127.0.0.1:{model_port}",
                    "OTEL_SERVICE_NAME": "lungwatch-gateway",
                }
            ),
            log_dir,
        )
        processes.append(gateway)
        # /ready, not /health: ready means the gateway reached the model server
        gateway.wait_ready(f"http://127.0.0.1:{gateway_port}/ready")
    except Exception:
        for proc in reversed(processes):
            proc.stop()
        raise
    return RunningSystem(
        spec, f"http://127.0.0.1:{gateway_port}/predict", processes, time.perf_counter() - began
    )


class Sink:
    """The discarding OTLP receiver (bench/sink.py) in its own process."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.process = Process(
            "otlp-sink", [PYTHON, "-m", "bench.sink", str(self.port)], base_env(), log_dir
        )
        self.process.wait_ready(self.url + "/stats", timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = httpx.get(self.url + "/stats", timeout=5).json()
        return counts

    def stop(self) -> None:
        self.process.stop()
