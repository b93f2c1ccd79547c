"""A TCP proxy in front of a real server that injects faults: delay, black hole, reset, garbage.

Tests put it between the gateway and the real model server (or an OTLP endpoint) and switch
its mode while traffic flows, like toxiproxy but in-process.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from devtools.procs import free_port


@dataclass
class Mode:
    kind: str = "pass"  # pass | delay | blackhole | reset | respond
    delay: float = 0.0  # seconds before each upstream answer is relayed (kind=delay)
    response: bytes = b""  # raw HTTP response sent for every request (kind=respond)


class FaultProxy:
    def __init__(self, upstream_port: int | None) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = Mode()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def set(self, kind: str, *, delay: float = 0.0, response: bytes = b"") -> None:
        self.mode = Mode(kind, delay, response)

    def respond(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.set("respond", response=head + body)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1-aware: the mode in force when each request arrives decides its fate."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (request := await _read_message(reader)) is not None:
                mode = self.mode
                if mode.kind == "reset":
                    writer.transport.abort()
                    return
                if mode.kind == "blackhole":
                    while await reader.read(65536):
                        pass  # read forever, never answer
                    return
                if mode.kind == "respond":
                    writer.write(mode.response)
                    await writer.drain()
                    continue
                if mode.kind == "delay":
                    await asyncio.sleep(mode.delay)
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                upstream[1].write(request)
                response = await _read_message(upstream[0])
                if response is None:
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            if upstream is not None:
                upstream[1].close()
            writer.close()


async def _read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 message (head + Content-Length body) as raw bytes; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    return head + body
