"""The four systems the benchmark compares, their processes, and what they cost the machine.

(1) bare `mlflow models serve`, (2) the full Lungwatch path with telemetry exported over OTLP,
(3) the same with the OTel SDK disabled, (4) the same with micro-batching off. Every system
serves the one model trained at the start of the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from devtools.procs import (
    PYTHON,
    VENV_BIN,
    ManagedProcess,
    TrainedModel,
    base_env,
    free_port,
    gateway,
    model_server,
)

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
        env={"LUNGWATCH_GATEWAY_BATCHING": "false"},
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
    processes: list[ManagedProcess]
    startup_s: float

    @property
    def server_pids(self) -> list[int]:
        return [p.pid for p in self.processes]

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
        proc = ManagedProcess(
            "mlflow-serve",
            [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model.model_uri,
             "--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"],
            env=base_env(MLFLOW_TRACKING_URI=model.tracking_uri),
            log_dir=log_dir,
            cwd=model.workdir,
            ready_url=f"http://127.0.0.1:{port}/ping",
            ready_timeout=120,
        ).start()  # fmt: skip
        return RunningSystem(
            spec, f"http://127.0.0.1:{port}/invocations", [proc], time.perf_counter() - began
        )

    telemetry_env = dict(spec.env)
    if spec.otlp:
        if otlp_endpoint is None:
            raise RuntimeError(f"{spec.key} exports over OTLP but no receiver runs")
        telemetry_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    # With several model-server workers, worker i serves /metrics on this + i: not the fixed
    # default, which a `make run` or a test on this machine may hold.
    server = model_server(
        model,
        log_dir,
        name=f"{spec.key}-model-server",
        ready_timeout=120,
        extra_env=telemetry_env,
        LUNGWATCH_MODEL_SERVER_METRICS_PORT=str(free_port()),
    )
    processes = [server.start()]
    try:
        # /ready, not /health: ready means the gateway reached the model server
        front = gateway(
            server.url,
            log_dir,
            name=f"{spec.key}-gateway",
            ready_path="/ready",
            extra_env=telemetry_env,
        )
        processes.append(front)
        front.start()
    except Exception:
        for proc in reversed(processes):
            proc.stop()
        raise
    return RunningSystem(spec, f"{front.url}/predict", processes, time.perf_counter() - began)


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
