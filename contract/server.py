"""How both Lungwatch servers run under uvicorn and leave on SIGTERM: drained, exit code 0."""

from __future__ import annotations

import gc
import signal
import socket
from typing import Any


def run_uvicorn(
    app: Any,
    host: str,
    port: int,
    graceful_shutdown_seconds: float,
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, finish in-flight requests, then return (exit code 0).

    uvicorn handles the signal gracefully, then re-raises it with the handler that was
    installed before it started, so the process would die "by SIGTERM" (exit -15); this
    handler turns that into a normal exit once the graceful shutdown is done. `sock` is a
    listening socket shared by several worker processes.
    """
    import uvicorn

    def exit_cleanly(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_cleanly)
    signal.signal(signal.SIGINT, exit_cleanly)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(graceful_shutdown_seconds),
        # libuv's event loop and the C HTTP parser: a request costs the loop less CPU.
        loop="uvloop",
        http="httptools",
    )
    # Everything built so far (the app, the model, imported modules) lives as long as the
    # process: moved out of the collector's generations, a full collection no longer walks
    # it, which otherwise stalls every request in flight for tens to hundreds of ms.
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
