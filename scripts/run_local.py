"""`make run`: the model server and the gateway on this machine, stopped together by Ctrl-C.

Ports and URLs come from the usual variables: LUNGWATCH_MODEL_SERVER_PORT (8080),
LUNGWATCH_GATEWAY_PORT (8000), LUNGWATCH_GATEWAY_HOST / LUNGWATCH_MODEL_SERVER_HOST (127.0.0.1).
The gateway is pointed at the model server it starts unless LUNGWATCH_GATEWAY_MODEL_SERVER_URL
says otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_ready(url: str, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} was not ready at {url} after {timeout:g}s")


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

    children: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: object) -> None:
        # Gateway first, so it stops taking requests before its model server goes away.
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # `kill` stops both, like Ctrl-C
    try:
        children.append(subprocess.Popen([sys.executable, "-m", "model.serve"], env=env))
        wait_ready(f"{model_url}/ping", children[0], "model server", 120)
        children.append(subprocess.Popen([sys.executable, "-m", "api"], env=env))
        wait_ready(f"{gateway_url}/health", children[1], "gateway", 60)
        print(
            "\nLungwatch is running (Ctrl-C stops both):\n"
            f"  gateway        {gateway_url}   (POST /predict, /predict/batch)\n"
            f"  API docs       {gateway_url}/docs\n"
            f"  metrics        {gateway_url}/metrics   and {model_url}/metrics\n"
            f"  health, ready  {gateway_url}/health   {gateway_url}/ready\n"
            f"  model server   {model_url}   (MLflow scoring app: /invocations, /ping)\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a process exited; stopping the other", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
