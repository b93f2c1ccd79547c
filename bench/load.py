"""The benchmark's load generator: a raw asyncio HTTP/1.1 keep-alive client, closed- and
open-loop drivers, run as its own process.

    python -m bench.load SPEC_JSON   # prints one JSON result line

It runs in a separate process so its CPU does not share an interpreter (and a GIL) with the
harness, and it speaks HTTP itself because an httpx request costs ~0.3 ms of client CPU, a
real share of a 2-core machine that also runs the servers. Open-loop latency is measured
from each request's *scheduled* send time, so a server that falls behind is charged for the
queue it causes (no coordinated omission).

Every run counts its answers by the `model_version` they name (the canary's split); a spec
with `"record": true` also returns one `[sent, latency_s, ok, version]` per request, `sent` on
the machine's monotonic clock, so the harness can place each request against an alias move it
made itself (the hot swap); with `"stoppable": true`, SIGUSR1 ends the schedule early (the
harness stops the hot swap's run once its moves are done, however long they took).
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from devtools.stats import latency_summary, poisson_schedule

REQUEST_TIMEOUT_S = 30.0
# uvicorn closes a keep-alive connection after 5 s idle; the client drops its own idle
# connections sooner (as httpx does with keepalive_expiry), or a request written onto a
# connection the server is closing fails without ever reaching the server.
IDLE_EXPIRY_S = 3.0
# Requests still unanswered this long after the last scheduled send count as timeouts:
# long enough for a saturated system to drain a 200 req/s backlog, short enough to bound a run.
DRAIN_TIMEOUT_S = 20.0
# How Lungwatch's single-row answer names its version (pydantic's compact JSON).
VERSION_KEY = b'"model_version":"'


class HttpError(Exception):
    """A response the client cannot parse, or a connection closed mid-response."""


@dataclass
class StopFlag:
    """Set from a signal handler; the open loop sends no request scheduled after it."""

    stopped: bool = False

    def set(self) -> None:
        self.stopped = True


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    keep_alive: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One HTTP/1.1 response: Content-Length or chunked bodies (uvicorn sends both)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HttpError("connection closed before a response") from exc
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get(b"connection", b"").lower() != b"close"
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers end with an empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunks.append((await reader.readexactly(size + 2))[:-2])
        body = b"".join(chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()
        keep_alive = False
    return Response(status, body, keep_alive)


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """A complete POST, built once per payload so the hot loop only writes bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.perf_counter()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> Response:
        self.writer.write(raw)
        response = await read_response(self.reader)
        self.last_used = time.perf_counter()
        return response

    def close(self) -> None:
        self.writer.close()


def answer_version(body: bytes) -> str | None:
    """The `model_version` a Lungwatch answer names, found without parsing the JSON (a bytes
    search costs well under a microsecond; json.loads would be a real share of the client)."""
    start = body.find(VERSION_KEY)
    if start < 0:
        return None
    start += len(VERSION_KEY)
    end = body.find(b'"', start)
    return body[start:end].decode(errors="replace") if end > start else None


@dataclass
class Recorder:
    """Latencies of successful requests and counts of everything else."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    first_start: float = 0.0
    last_end: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)  # answers by the version they name
    # [sent (monotonic clock), latency, 1 if answered, version or ""] per request, when asked
    requests: list[tuple[float, float, int, str]] | None = None
    # perf_counter -> monotonic (the same clock on Linux; measured, not assumed)
    clock_offset: float = field(default_factory=lambda: time.monotonic() - time.perf_counter())

    def record(
        self, status: int | str, latency: float, end: float, body: bytes = b"", sent: float = 0.0
    ) -> None:
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        version = ""
        if status == 200:
            self.latencies.append(latency)
            version = answer_version(body) or ""
            if version:
                self.versions[version] = self.versions.get(version, 0) + 1
        else:
            self.errors += 1
        self.last_end = max(self.last_end, end)
        if self.requests is not None:
            ok = 1 if status == 200 else 0
            self.requests.append((sent + self.clock_offset, latency, ok, version))

    def result(self, elapsed: float) -> dict[str, Any]:
        ok = len(self.latencies)
        total = ok + self.errors
        return {
            "requests": total,
            "ok": ok,
            "errors": self.errors,
            "statuses": self.statuses,
            "elapsed_s": elapsed,
            "throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
            "latency": latency_summary(self.latencies),
            "versions": self.versions,
            **({"records": self.requests} if self.requests is not None else {}),
        }


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    requests: Sequence[bytes]  # ready-to-send requests, cycled through

    @classmethod
    def from_url(cls, url: str, bodies: Sequence[bytes]) -> Target:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        return cls(host, port, [build_request(host, port, parts.path or "/", b) for b in bodies])


async def exchange(conn: Connection | None, target: Target, raw: bytes) -> tuple[Response, bool]:
    """Send on conn (or a new connection); True when the connection can be reused."""
    if conn is None:
        conn = await Connection.open(target.host, target.port)
    response = await conn.send(raw)
    return response, response.keep_alive


async def closed_loop(target: Target, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`concurrency` workers, each sending its next request as soon as the last answers."""
    rec = Recorder()
    # Connections are opened before the clock starts: a saturation figure, not a connect test.
    conns: list[Connection | None] = list(
        await asyncio.gather(
            *(Connection.open(target.host, target.port) for _ in range(concurrency))
        )
    )
    start = time.perf_counter()
    stop_at = start + duration_s
    n = len(target.requests)

    async def worker(i: int) -> None:
        conn = conns[i]
        index = i
        while time.perf_counter() < stop_at:
            raw = target.requests[index % n]
            index += concurrency
            sent = time.perf_counter()
            status: int | str
            body = b""
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    if conn is None:
                        conn = await Connection.open(target.host, target.port)
                    response = await conn.send(raw)
                status, body = response.status, response.body
                if not response.keep_alive:
                    conn.close()
                    conn = None
            except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            end = time.perf_counter()
            rec.record(status, end - sent, end, body, sent)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    result = rec.result(max(rec.last_end, stop_at) - start)
    result.update(mode="closed", concurrency=concurrency)
    return result


async def open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    seed: int,
    max_connections: int = 256,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    record: bool = False,
    stop: StopFlag | None = None,
) -> dict[str, Any]:
    """Requests sent on a seeded Poisson schedule at `rate`, whatever the server does.

    Latency runs from the scheduled send time. At most `max_connections` are open; a request
    finding none free waits for one, and that wait counts in its latency, as it would for a
    real client whose requests pile up. Once `stop` is set, the rest of the schedule is
    dropped and the run lasted until then.
    """
    rec = Recorder(requests=[] if record else None)
    schedule = poisson_schedule(rate, duration_s, seed)
    idle: list[Connection] = []
    slots = asyncio.Semaphore(max_connections)
    n = len(target.requests)
    # A few warm connections, so the first requests do not all pay a TCP connect.
    idle.extend(
        await asyncio.gather(
            *(Connection.open(target.host, target.port) for _ in range(min(8, max_connections)))
        )
    )

    def take_idle() -> Connection | None:
        while idle:
            conn = idle.pop()
            if time.perf_counter() - conn.last_used < IDLE_EXPIRY_S:
                return conn
            conn.close()
        return None

    async def one(index: int, scheduled: float) -> None:
        raw = target.requests[index % n]
        status: int | str
        body = b""
        async with slots:
            conn = take_idle()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    if conn is None:
                        conn = await Connection.open(target.host, target.port)
                        response = await conn.send(raw)
                    else:
                        try:
                            response = await conn.send(raw)
                        except (HttpError, ConnectionError):
                            # a reused connection the server closed in the meantime: the
                            # request never reached it, so send it again (as httpx does)
                            conn.close()
                            conn = await Connection.open(target.host, target.port)
                            response = await conn.send(raw)
                status, body = response.status, response.body
                if response.keep_alive:
                    idle.append(conn)
                else:
                    conn.close()
            except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
                if conn is not None:
                    conn.close()
            end = time.perf_counter()
            rec.record(status, end - scheduled, end, body, scheduled)

    tasks: dict[asyncio.Task[None], float] = {}  # each request's task -> its scheduled send
    start = time.perf_counter() + 0.05
    late = 0
    for index, offset in enumerate(schedule):
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1  # the client itself could not keep the schedule
        if stop is not None and stop.stopped:
            schedule = schedule[:index]
            duration_s = offset
            break
        tasks[asyncio.create_task(one(index, due))] = due
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
        for task in pending:
            task.cancel()
            now = time.perf_counter()
            rec.record("drain_timeout", now - tasks[task], now, sent=tasks[task])
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    for conn in idle:
        conn.close()
    # Achieved rate: answers per second from the first scheduled send to the last answer, so a
    # server that needs longer than the run to answer it shows a lower rate than offered.
    elapsed = max(rec.last_end, start + duration_s) - start
    result = rec.result(elapsed)
    result.update(
        mode="open",
        rate=rate,
        scheduled=len(schedule),
        # A seeded Poisson schedule holds rate×duration arrivals only on average: the rate
        # actually offered is what `achieved_rps` must be compared with.
        offered_rps=len(schedule) / duration_s if duration_s > 0 else 0.0,
        late_sends=late,
        achieved_rps=result["throughput_rps"],
        duration_s=duration_s,
        stopped_early=bool(stop and stop.stopped),
    )
    return result


def kept_rate(
    result: dict[str, Any], tolerance: float = 0.95, max_error_rate: float = 0.01
) -> bool:
    """Whether an open-loop run kept the rate it offered: ≥95 % of it answered within the
    run's duration (a backlog stretches the elapsed time), ≤1 % errors."""
    requests = result.get("requests", 0)
    if not requests:
        return False
    return bool(
        result["achieved_rps"] >= tolerance * result["offered_rps"]
        and result["errors"] / requests <= max_error_rate
    )


async def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    with open(spec["payloads"], encoding="utf-8") as fh:
        bodies = [b.encode() for b in json.load(fh)]
    target = Target.from_url(spec["url"], bodies)
    stop = None
    if spec.get("stoppable"):
        stop = StopFlag()
        signal.signal(signal.SIGUSR1, lambda *_: stop.set())
    if spec["mode"] == "closed":
        return await closed_loop(target, int(spec["concurrency"]), float(spec["duration_s"]))
    result = await open_loop(
        target,
        float(spec["rate"]),
        float(spec["duration_s"]),
        int(spec.get("seed", 1)),
        record=bool(spec.get("record")),
        stop=stop,
    )
    result["kept"] = kept_rate(result)
    return result


def main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(run_spec(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The client's own CPU per request shows whether the client, not the server, was the limit.
    result["client_cpu_ms_per_request"] = (
        1000 * cpu / result["requests"] if result["requests"] else None
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
