"""How both Lungwatch servers run under uvicorn and leave on SIGTERM: drained, exit code 0."""

from __future__ import annotations

import gc
import signal
import socket
from typing import Any, Protocol

GC_YOUNG_THRESHOLD = 20_000


class ServerSettings(Protocol):
    """What run_uvicorn reads: the fields GatewaySettings and ModelServerSettings share."""

    host: str
    port: int
    graceful_shutdown_seconds: float
    http_header_timeout_seconds: float
    http_max_connections: int
    forwarded_allow_ips: str


def run_uvicorn(app: Any, settings: ServerSettings, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM/SIGINT, finish in-flight requests, then return (exit code 0).

    uvicorn handles the signal gracefully, then re-raises it with the handler that was
    installed before it started, so the process would die "by SIGTERM" (exit -15); this
    handler turns that into a normal exit once the graceful shutdown is done. `sock` is a
    listening socket shared by several worker processes.
    """
    import uvicorn

    from contract.http_protocol import http_protocol

    def exit_cleanly(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_cleanly)
    signal.signal(signal.SIGINT, exit_cleanly)
    trusted_proxies = [ip.strip() for ip in settings.forwarded_allow_ips.split(",") if ip.strip()]
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
        # libuv's event loop and the C HTTP parser: a request costs the loop less CPU. The
        # parser is also llhttp's framing rules (ambiguous framing refused and the connection
        # closed, which h11 does not do), with a header-read deadline (contract/http_protocol).
        loop="uvloop",
        http=http_protocol(settings.http_header_timeout_seconds),
        # uvicorn answers 503 (text, connection closed) once connections or tasks reach the
        # limit, the one asking included: +1 makes the setting the number served at once.
        limit_concurrency=settings.http_max_connections + 1
        if settings.http_max_connections
        else None,
        # Every request's task starts from an empty contextvars context. Otherwise uvicorn
        # creates a pipelined request's task inside the previous request's (when that one's
        # response completes) and it inherits that request's OpenTelemetry context: its
        # server span would join the other request's trace.
        reset_contextvars=True,
        # Set explicitly so uvicorn's defaults (trust 127.0.0.1, or $FORWARDED_ALLOW_IPS)
        # never decide it: X-Forwarded-For/-Proto rewrite the client address and scheme only
        # when the peer is a configured proxy, and with none configured they are ignored.
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies,
    )
    # Everything built so far (the app, the model, imported modules) lives as long as the
    # process: moved out of the collector's generations, a full collection no longer walks
    # it, which otherwise stalls every request in flight for tens to hundreds of ms.
    gc.collect()
    gc.freeze()
    # Collect the youngest generation after 20,000 net allocations instead of 700. Under
    # load, a request's objects (and the spans the batch processor holds until its next
    # export, up to 512 of ~20 objects each) survive the default's frequent young
    # collections, so each of them is then traversed again by generation-1 and full
    # collections: measured with gc.callbacks over 11 s at 64 connections, the gateway spent
    # ~0.9 s in the collector with telemetry on and with it off (~110 and ~55 µs a request),
    # and 0.01-0.02 s with this threshold; the longest pause stayed under 20 ms either way.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
