"""`make run`: supervises the model server and the gateway; restarts a child that dies.

A child that exits is restarted after a backoff (0.5 s, doubling to 10 s while it keeps dying
within 30 s of its start) and the restart is logged; the other child keeps running, so while
the model server is away the gateway answers 503 and `/ready` says not ready. Ctrl-C (SIGINT)
or SIGTERM stops both, gateway first, and exits 0.

Why not an existing process manager: honcho (Procfile runner) stops everything when one
process exits, like the launcher this replaces; circus restarts but brings a daemon, ZeroMQ
and tornado into the dev environment for two children. The loop below is what is needed.

Ports and URLs come from the usual variables: LUNGWATCH_MODEL_SERVER_PORT (8080),
LUNGWATCH_GATEWAY_PORT (8000), LUNGWATCH_GATEWAY_HOST / LUNGWATCH_MODEL_SERVER_HOST (127.0.0.1).
The gateway is pointed at the model server it starts unless LUNGWATCH_GATEWAY_MODEL_SERVER_URL
says otherwise. Both get one shared secret (LUNGWATCH_MODEL_SERVER_SHARED_SECRET, random per
run unless set), so other local processes reach only the model server's /ping and /metrics.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Backoff:
    """Delay before restarting a child: doubles while it dies soon after starting."""

    initial: float = 0.5
    maximum: float = 10.0
    stable_seconds: float = 30.0  # a child that ran this long was healthy: start over
    current: float = 0.0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.stable_seconds or self.current == 0.0:
            self.current = self.initial
        else:
            self.current = min(self.current * 2, self.maximum)
        return self.current


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # when a dead child is due to start again
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)


def log(message: str) -> None:
    print(f"run_local: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Starts children, restarts the ones that exit, stops them all on request."""

    def __init__(
        self,
        children: Sequence[Child],
        env: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = list(children)
        self.env = dict(env)
        self.clock = clock
        self.stopping = False

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(list(child.argv), env=self.env)
        child.started_at = self.clock()
        child.restart_at = None

    def check(self) -> None:
        """One round: notice exits, schedule restarts, start what is due."""
        now = self.clock()
        for child in self.children:
            if self.stopping:
                return
            if child.proc is not None and child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                delay = child.backoff.next_delay(now - child.started_at)
                child.restart_at = now + delay
                log(f"{child.name} exited with code {code}; restarting in {delay:g}s")
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                log(f"restarting {child.name} (restart {child.restarts})")
                self.start(child)

    def run(self, interval: float = 0.2) -> None:
        while not self.stopping:
            self.check()
            time.sleep(interval)

    def stop(self, timeout: float = 15.0) -> None:
        """Gateway first (the last child), so it stops taking requests before its model
        server goes away; SIGKILL whatever is still running after `timeout`."""
        self.stopping = True
        running = [c.proc for c in reversed(self.children) if c.proc and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, child: Child, timeout: float, supervisor: Supervisor) -> bool:
    """Poll `url` until 200 while supervising (a child that dies meanwhile is restarted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.stopping:
        supervisor.check()
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    if not supervisor.stopping:
        log(f"{child.name} was not ready at {url} after {timeout:g}s; still supervising")
    return False


def main() -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # Each process names itself (lungwatch-gateway, lungwatch-model-server); one shared
    # OTEL_SERVICE_NAME would merge both into one service in every backend.
    env.pop("OTEL_SERVICE_NAME", None)
    model_host = env.setdefault("LUNGWATCH_MODEL_SERVER_HOST", "127.0.0.1")
    model_port = env.setdefault("LUNGWATCH_MODEL_SERVER_PORT", "8080")
    host = env.setdefault("LUNGWATCH_GATEWAY_HOST", "127.0.0.1")
    port = env.setdefault("LUNGWATCH_GATEWAY_PORT", "8000")
    model_url = env.setdefault(
        "LUNGWATCH_GATEWAY_MODEL_SERVER_URL", f"http://{model_host}:{model_port}"
    )
    gateway_url = f"http://{host}:{port}"
    # Kept for the whole run: a restarted child gets the same secret as the one still running.
    secret = env.setdefault("LUNGWATCH_MODEL_SERVER_SHARED_SECRET", secrets.token_urlsafe(32))
    env.setdefault("LUNGWATCH_GATEWAY_MODEL_SERVER_SECRET", secret)

    model = Child("model server", [sys.executable, "-m", "model.serve"])
    gateway = Child("gateway", [sys.executable, "-m", "api"])
    supervisor = Supervisor([model, gateway], env)

    def stop_requested(signum: int, frame: object) -> None:
        supervisor.stopping = True  # the loop ends; no child is restarted from now on

    # Ctrl-C reaches the children too (same process group); they drain and exit 0.
    signal.signal(signal.SIGINT, stop_requested)
    signal.signal(signal.SIGTERM, stop_requested)
    try:
        supervisor.start(model)
        wait_ready(f"{model_url}/ping", model, 120, supervisor)
        if not supervisor.stopping:
            supervisor.start(gateway)
        if wait_ready(f"{gateway_url}/health", gateway, 60, supervisor):
            print(
                "\nLungwatch is running (Ctrl-C stops both; a process that dies is restarted):\n"
                f"  gateway        {gateway_url}   (POST /predict, /predict/batch)\n"
                f"  API docs       {gateway_url}/docs\n"
                f"  metrics        {gateway_url}/metrics   and {model_url}/metrics\n"
                f"  health, ready  {gateway_url}/health   {gateway_url}/ready\n"
                f"  model server   {model_url}   (MLflow scoring app: /invocations, /ping;\n"
                "                 only the gateway's secret opens it, this run's is random)\n",
                flush=True,
            )
        supervisor.run()
    finally:
        supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
