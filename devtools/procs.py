"""Real processes for tests and the benchmark: model server, gateway, Prometheus, on free ports.

Each start polls readiness with a deadline and, when something never becomes ready, fails
with what it waited for and the tail of that process's log. Product code never imports this.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# The venv's bin, unresolved: `mlflow models serve` shells out to a bare `uvicorn` on PATH.
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")

# A port is picked, released, then bound by the child: another process may take it in
# between. The kernel hands out ephemeral ports (outgoing connections, bind to port 0) from
# 32768 up, so ports are picked below that range, at random (a caller may use port + 1 for a
# second worker), and never the same one twice in a process.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()
_ports_lock = threading.Lock()
_random = random.Random()


def free_port() -> int:
    """A port nothing listens on now, outside the kernel's ephemeral range, not handed out
    before by this process."""
    with _ports_lock:
        for _ in range(1000):
            port = _random.randrange(*_PORT_RANGE)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {_PORT_RANGE}")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until predicate() is truthy and return it; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a not-yet-ready server raises; keep polling
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout:g}s (last error: {last_error})")


def base_env(**overrides: str) -> dict[str, str]:
    """A child's environment: repo importable, venv first on PATH, no stray OTel/Lungwatch
    settings from the caller's shell (they would silently change what is tested or measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUNGWATCH_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(overrides)
    return env


class ManagedProcess:
    """A child process with a log file, readiness polling and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path = REPO_ROOT,
        ready_url: str | None = None,
        ready_timeout: float = 60.0,
        url: str = "",
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.ready_url = ready_url
        self.ready_timeout = ready_timeout
        self.url = url
        self.proc: subprocess.Popen[bytes] | None = None
        # Several processes of one name may share a log file (appended): this one's part of
        # it starts here.
        self._log_start = 0

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._log_start = log.tell()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if self.ready_url:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            return httpx.get(self.ready_url or "", timeout=1.0).status_code == 200

        try:
            wait_until(ready, self.ready_timeout, f"{self.name} ready at {self.ready_url}", 0.2)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- {self.name} log ---\n{self.log_tail()}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # e.g. the mlflow CLI does not always pass SIGTERM on: kill the whole tree
                for child in process_tree([self.proc.pid])[1:]:
                    child.kill()
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_text(self) -> str:
        """What this process (its latest start) wrote to its log."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def process_tree(pids: Sequence[int]) -> list[psutil.Process]:
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
    """User+system CPU of the process trees under pids (forked workers are children)."""
    total = 0.0
    for proc in process_tree(pids):
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
    for proc in process_tree(pids):
        try:
            rss += proc.memory_info().rss
            pss += getattr(proc.memory_full_info(), "pss", 0)
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"rss_bytes": rss, "pss_bytes": pss, "processes": count}


# --- the model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedModel:
    tracking_uri: str
    model_uri: str
    version: str
    run_id: str
    workdir: Path
    metrics: dict[str, Any]


def train_model(workdir: Path, *extra_args: str) -> TrainedModel:
    """Train and register into a fresh sqlite store under workdir (artifacts go there too)."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{workdir / 'mlruns.db'}"
    done = subprocess.run(
        [PYTHON, "-m", "model.train", *extra_args],
        env=base_env(MLFLOW_TRACKING_URI=tracking_uri),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"training failed:\n{done.stdout}\n{done.stderr}"
    result = json.loads(done.stdout[done.stdout.index("{") :])
    return TrainedModel(
        tracking_uri=tracking_uri,
        model_uri=result.pop("model_uri"),
        version=result.pop("version"),
        run_id=result.pop("run_id"),
        workdir=workdir,
        metrics=result,
    )


def model_server(
    model: TrainedModel,
    log_dir: Path,
    *,
    port: int | None = None,
    name: str = "model-server",
    ready_timeout: float = 60.0,
    extra_env: Mapping[str, str] | None = None,
    **env: str,
) -> ManagedProcess:
    port = port or free_port()
    env = {**(extra_env or {}), **env}
    return ManagedProcess(
        name,
        [PYTHON, "-m", "model.serve"],
        env=base_env(
            MLFLOW_TRACKING_URI=model.tracking_uri,
            LUNGWATCH_MODEL_SERVER_MODEL_URI=model.model_uri,
            LUNGWATCH_MODEL_SERVER_PORT=str(port),
            OTEL_SERVICE_NAME="lungwatch-model-server",
            **env,
        ),
        cwd=model.workdir,
        log_dir=log_dir,
        ready_url=f"http://127.0.0.1:{port}/ping",
        ready_timeout=ready_timeout,
        url=f"http://127.0.0.1:{port}",
    )


def gateway(
    model_server_url: str,
    log_dir: Path,
    *,
    port: int | None = None,
    name: str = "gateway",
    ready_path: str = "/health",
    extra_env: Mapping[str, str] | None = None,
    **env: str,
) -> ManagedProcess:
    """The gateway; `ready_path="/ready"` also waits until it reaches its model server."""
    port = port or free_port()
    env = {**(extra_env or {}), **env}
    return ManagedProcess(
        name,
        [PYTHON, "-m", "api"],
        env=base_env(
            LUNGWATCH_GATEWAY_PORT=str(port),
            LUNGWATCH_GATEWAY_MODEL_SERVER_URL=model_server_url,
            OTEL_SERVICE_NAME="lungwatch-gateway",
            **env,
        ),
        log_dir=log_dir,
        ready_url=f"http://127.0.0.1:{port}{ready_path}",
        url=f"http://127.0.0.1:{port}",
    )


def otlp_env(endpoint: str) -> dict[str, str]:
    """Export traces and metrics quickly to an in-test OTLP/HTTP receiver."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }


# --- Prometheus --------------------------------------------------------------------------
def require_binary(name: str, *alternatives: str) -> str:
    """The path of a binary `make test` installs; skip outside CI, fail in CI."""
    import pytest  # only tests ask for binaries; the benchmark must not need pytest

    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path:
            return path
    message = f"{name} is not installed (make test installs it with apt-get)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def prometheus_config(
    scrape_jobs: Mapping[str, Sequence[str]],
    *,
    rule_files: Sequence[str | Path] = (),
    alertmanager_url: str | None = None,
    interval: str = "1s",
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in scrape_jobs.items()
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanager_url:
        host = alertmanager_url.split("://", 1)[-1].rstrip("/")
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    return config


def prometheus(
    workdir: Path,
    scrape_jobs: Mapping[str, Sequence[str]],
    *,
    rule_files: Sequence[str | Path] = (),
    alertmanager_url: str | None = None,
    interval: str = "1s",
    config: dict[str, Any] | None = None,
) -> ManagedProcess:
    """A real Prometheus with exemplar storage on a free port, its data under workdir."""
    import yaml

    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = config or prometheus_config(
        scrape_jobs, rule_files=rule_files, alertmanager_url=alertmanager_url, interval=interval
    )
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    return ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--web.enable-remote-write-receiver",
            "--web.enable-lifecycle",
        ],
        env=base_env(),
        log_dir=workdir,
        ready_url=f"http://127.0.0.1:{port}/-/ready",
        url=f"http://127.0.0.1:{port}",
    )


def prom_query(prom_url: str, expr: str, time_s: float | None = None) -> list[dict[str, Any]]:
    """Instant query; raises with Prometheus's own error text when the query is invalid."""
    params: dict[str, Any] = {"query": expr}
    if time_s is not None:
        params["time"] = time_s
    response = httpx.get(f"{prom_url}/api/v1/query", params=params, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def prom_value(prom_url: str, expr: str) -> float | None:
    """The single value of a scalar-like query (None when it returns no series)."""
    result = prom_query(prom_url, expr)
    if not result:
        return None
    assert len(result) == 1, f"{expr!r} returned {len(result)} series"
    return float(result[0]["value"][1])


def scraped_since(prom_url: str, job: str, since: float) -> bool:
    """True once every target of `job` has a completed scrape that started after `since`."""
    response = httpx.get(f"{prom_url}/api/v1/targets", params={"state": "active"}, timeout=5)
    targets = [t for t in response.json()["data"]["activeTargets"] if t["labels"]["job"] == job]
    if not targets:
        return False
    from datetime import datetime

    for target in targets:
        last = target.get("lastScrape", "")
        if target.get("health") != "up" or not last or last.startswith("0001"):
            return False
        if datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() <= since:
            return False
    return True


def run_loadgen(workdir: Path, name: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """`python -m loadgen ARGS` with a JSON report in workdir: (exit code, report, output)."""
    import json

    report = workdir / f"{name}.json"
    done = subprocess.run(
        [PYTHON, "-m", "loadgen", "--quiet", "--json", str(report), *args],
        env=base_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert report.exists(), f"no report (exit {done.returncode}):\n{output}"
    return done.returncode, json.loads(report.read_text()), output
