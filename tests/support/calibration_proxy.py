"""A proxy between the gateway and the model server that miscalibrates the model: it rescales
the lean path's probabilities with a temperature, p_k^(1/T) / sum_j p_j^(1/T), and relays
everything else untouched.

The argmax of every row is unchanged (x -> x^(1/T) is increasing), so the served classes and
the realized accuracy stay what they were: only the probabilities lie. T < 1 makes the model
overconfident, T > 1 underconfident. No product code changes; the gateway sees a model server
whose calibration broke.
"""

from __future__ import annotations

import asyncio
import threading

import orjson

from contract.wire import PROBABILITIES_KEY, ROWS_PATH
from devtools.procs import free_port
from tests.support.faultproxy import _read_message

_LEAN_PATH = f"POST {ROWS_PATH} ".encode()


def rescale(probabilities: list[float], temperature: float) -> list[float]:
    powered = [p ** (1 / temperature) for p in probabilities]
    total = sum(powered)
    return [p / total for p in powered]


class TemperatureProxy:
    def __init__(self, upstream_port: int, temperature: float) -> None:
        self.upstream_port = upstream_port
        self.temperature = temperature
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rows_rescaled = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> TemperatureProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _rewrite(self, response: bytes) -> bytes:
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if b" 200 " not in lines[0] + b" ":
            return response
        answer = orjson.loads(body)
        rows = answer[PROBABILITIES_KEY]
        answer[PROBABILITIES_KEY] = [rescale(row, self.temperature) for row in rows]
        self.rows_rescaled += len(rows)
        new_body = orjson.dumps(answer)
        kept = [line for line in lines if not line.lower().startswith(b"content-length:")]
        kept.append(b"content-length: " + str(len(new_body)).encode())
        return b"\r\n".join(kept) + b"\r\n\r\n" + new_body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 keep-alive, one exchange at a time per connection, as the gateway's
        client uses it."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (request := await _read_message(reader)) is not None:
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                upstream[1].write(request)
                response = await _read_message(upstream[0])
                if response is None:
                    return
                if request.startswith(_LEAN_PATH):
                    response = self._rewrite(response)
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            if upstream is not None:
                upstream[1].close()
            writer.close()
