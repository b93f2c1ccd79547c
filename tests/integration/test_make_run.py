"""`make run`'s supervisor (scripts/run_local.py) with the real model server and gateway.

kill -9 of the model server: /predict answers 503 at once and 200 again, with no action,
once the restarted model server is ready; kill -9 of the gateway: back on its port; Ctrl-C
(SIGINT to the process group, as a terminal sends it) stops everything and exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import psutil
import pytest

from contract.features import EXAMPLE_FEATURES
from devtools import procs

SCRIPT = procs.REPO_ROOT / "scripts" / "run_local.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_local", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_local", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_backoff_doubles_while_a_child_keeps_dying_and_resets_after_a_stable_run() -> None:
    backoff = _load_script().Backoff(initial=0.5, maximum=4, stable_seconds=30)
    assert [backoff.next_delay(1) for _ in range(5)] == [0.5, 1, 2, 4, 4]
    assert backoff.next_delay(31) == 0.5


class Run:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def child(self, module: str) -> psutil.Process:
        for child in psutil.Process(self.proc.pid).children():
            if module in " ".join(child.cmdline()):
                return child
        raise AssertionError(f"no {module} child of run_local.py:\n{self.log.read_text()}")

    def predict_status(self) -> int:
        try:
            response = httpx.post(
                f"{self.url}/predict", json={"features": list(EXAMPLE_FEATURES)}, timeout=5
            )
        except httpx.TransportError:
            return 0
        return response.status_code

    def get_status(self, path: str) -> int:
        try:
            return httpx.get(f"{self.url}{path}", timeout=2).status_code
        except httpx.TransportError:
            return 0


@pytest.fixture
def make_run(trained_model: procs.TrainedModel, integration_dir: Path) -> Iterator[Run]:
    gateway_port, model_port = procs.free_port(), procs.free_port()
    env = procs.base_env(
        MLFLOW_TRACKING_URI=trained_model.tracking_uri,
        LUNGWATCH_MODEL_SERVER_MODEL_URI=trained_model.model_uri,
        LUNGWATCH_MODEL_SERVER_PORT=str(model_port),
        LUNGWATCH_GATEWAY_PORT=str(gateway_port),
    )
    log = integration_dir / "logs" / "make-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        # Its own session: SIGINT to its group is what Ctrl-C in a terminal does.
        proc = subprocess.Popen(
            [procs.PYTHON, str(SCRIPT)],
            env=env,
            cwd=trained_model.workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = Run(proc, f"http://127.0.0.1:{gateway_port}", log)
    try:
        yield run
    finally:
        if proc.poll() is None:
            tree = procs.process_tree([proc.pid])
            os.killpg(proc.pid, signal.SIGKILL)
            for leftover in tree:
                leftover.wait(10)


def test_make_run_restarts_a_killed_child_and_stops_on_ctrl_c(make_run: Run) -> None:
    run = make_run
    procs.wait_until(lambda: run.predict_status() == 200, 120, "a first 200 from /predict")

    model_server = run.child("model.serve")
    model_server.kill()  # kill -9
    procs.wait_until(lambda: run.predict_status() == 503, 2, "503 from /predict after kill -9")
    procs.wait_until(lambda: run.get_status("/ready") == 503, 5, "/ready saying not ready")
    procs.wait_until(lambda: run.predict_status() == 200, 60, "200 again after the restart")
    assert run.child("model.serve").pid != model_server.pid
    assert run.get_status("/ready") == 200

    gateway = run.child("-m api")
    gateway.kill()
    procs.wait_until(lambda: run.get_status("/health") == 200, 60, "the gateway back on its port")
    assert run.child("-m api").pid != gateway.pid
    procs.wait_until(lambda: run.predict_status() == 200, 30, "200 from the restarted gateway")

    children = psutil.Process(run.proc.pid).children(recursive=True)
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.proc.wait(30) == 0, run.log.read_text()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after Ctrl-C: {alive}"
    text = run.log.read_text()
    assert "model server exited with code -9; restarting in" in text, text
    assert "gateway exited with code -9; restarting in" in text, text
