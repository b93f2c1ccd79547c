"""The asyncio engine: open-loop (on schedule, whatever the answers) and closed-loop runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

import anyio.to_thread
import httpx

from loadgen.payloads import STICKY_HEADER, PayloadFactory, RequestSpec
from loadgen.stats import CONNECTION, OTHER, TIMEOUT, Outcome, Recorder

JSON_HEADERS = {"content-type": "application/json"}

# Called after each answered request; issue 6's `--feedback` (labels posted back for the
# prediction ids received) fits here without touching the engine.
ResponseHook = Callable[[httpx.AsyncClient, Outcome], Awaitable[None]]


@dataclass
class RunPlan:
    """How much traffic to send, and how; exactly one of `offsets` and `concurrency` is set."""

    offsets: Iterable[float] | None = None  # open loop: send times from the run start
    concurrency: int | None = None  # closed loop: this many users, each waiting for its answer
    duration: float = math.inf  # closed loop only: open-loop schedules carry their own end
    requests: int | None = None
    max_in_flight: int = 256
    on_full: Literal["wait", "drop"] = "wait"
    timeout: float = 10.0
    hooks: Sequence[ResponseHook] = field(default_factory=tuple)
    sticky_header: str = STICKY_HEADER  # carries each request's `sticky_key`, when it has one


def decode_predictions(body: object) -> tuple[int, ...]:
    """Predicted classes from a /predict or /predict/batch answer, in row order."""
    if not isinstance(body, dict):
        return ()
    try:
        if "predictions" in body:
            return tuple(int(p["prediction"]) for p in body["predictions"])
        return (int(body["prediction"]),)
    except (KeyError, TypeError, ValueError):
        return ()


def decode_model_version(body: object) -> str | None:
    """The version that scored a /predict or /predict/batch answer (top level in both)."""
    version = body.get("model_version") if isinstance(body, dict) else None
    return version if isinstance(version, str) and version else None


class Runner:
    def __init__(
        self,
        client: httpx.AsyncClient,
        factory: PayloadFactory,
        recorder: Recorder,
        hooks: Sequence[ResponseHook] = (),
        sticky_header: str = STICKY_HEADER,
    ) -> None:
        self.client = client
        self.factory = factory
        self.recorder = recorder
        self.hooks = hooks
        self.sticky_header = sticky_header

    async def send(self, spec: RequestSpec, scheduled: float, follow_up: bool = False) -> Outcome:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self.recorder.on_send(spec, scheduled, sent, follow_up)
        status: int | None = None
        error: str | None = None
        body: object = None
        headers = JSON_HEADERS
        if spec.sticky_key is not None:
            headers = {**JSON_HEADERS, self.sticky_header: spec.sticky_key}
        try:
            response = await self.client.post(spec.path, content=spec.body, headers=headers)
            status = response.status_code
            if status == 200:
                try:
                    body = response.json()
                except (json.JSONDecodeError, UnicodeDecodeError):
                    body = None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            error = CONNECTION
        except httpx.TimeoutException:
            error = TIMEOUT
        except httpx.HTTPError:
            error = OTHER
        outcome = Outcome(
            spec,
            scheduled,
            sent,
            loop.time(),
            status,
            error,
            decode_predictions(body),
            body,
            decode_model_version(body),
        )
        self.recorder.on_done(outcome)
        for hook in self.hooks:
            await hook(self.client, outcome)
        if spec.then is not None:
            # A repeated row's second (`--quality repeated_row`): only now, so the gateway has
            # answered, and compared, the first. Off the schedule: due when it is sent.
            await self.send(spec.then, loop.time(), follow_up=True)
        return outcome

    async def _send_in_slot(
        self, spec: RequestSpec, scheduled: float, slots: asyncio.Semaphore
    ) -> None:
        async with slots:
            await self.send(spec, scheduled)

    async def open_loop(
        self,
        offsets: Iterable[float],
        requests: int | None,
        max_in_flight: int,
        on_full: Literal["wait", "drop"],
    ) -> None:
        """Send each request at start + offset whatever happened to the earlier ones.

        If the generator falls behind (a busy event loop, a full in-flight cap) the request
        goes out late but keeps its scheduled time, so the delay shows as latency.
        """
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        for i, offset in enumerate(offsets):
            if requests is not None and i >= requests:
                break
            due = self.recorder.start + offset
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            spec = self.factory.next()
            if slots.locked():
                if on_full == "drop":
                    self.recorder.on_drop(spec, due)
                    continue
                self.recorder.late += 1
            task = asyncio.create_task(self._send_in_slot(spec, due, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def closed_loop(self, concurrency: int, duration: float, requests: int | None) -> None:
        """`concurrency` users, each sending its next request when the previous one is answered.

        This finds maximum throughput; its latencies are service times, blind to queueing
        (coordinated omission), which is why the open loop is the default.
        """
        loop = asyncio.get_running_loop()
        deadline = self.recorder.start + duration
        issued = 0

        async def user() -> None:
            nonlocal issued
            while loop.time() < deadline and (requests is None or issued < requests):
                issued += 1
                await self.send(self.factory.next(), loop.time())

        await asyncio.gather(*(user() for _ in range(concurrency)))


def progress_line(recorder: Recorder, now: float, window_rate: float) -> str:
    # Two percentiles only: a full summary (the mean walks every bucket) takes ~30 ms, long
    # enough to delay the sends due meanwhile.
    p50 = p99 = 0.0
    if recorder.latency.get_total_count():
        values = recorder.latency.get_percentile_to_value_dict([50, 99])
        p50, p99 = values[50] / 1000, values[99] / 1000  # microseconds to ms
    classes = recorder.status_classes()
    errors = sum(recorder.errors.values())
    return (
        f"[{now - recorder.start:6.1f}s] sent {recorder.sent} ({window_rate:.1f}/s)"
        f" 2xx {classes['2xx']} 4xx {classes['4xx']} 5xx {classes['5xx']}"
        f" errors {errors} dropped {recorder.dropped} in-flight {recorder.in_flight}"
        f" p50 {p50:.1f}ms p99 {p99:.1f}ms"
    )


async def report_progress(recorder: Recorder, stream: TextIO, interval: float = 1.0) -> None:
    """Once a second: rate over the last second, outcomes and percentiles so far."""
    loop = asyncio.get_running_loop()
    tty = stream.isatty()
    last_sent, last_at = recorder.sent, loop.time()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        rate = (recorder.sent - last_sent) / (now - last_at)
        last_sent, last_at = recorder.sent, now
        line = progress_line(recorder, now, rate)
        stream.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
        stream.flush()


async def warm_up(url: httpx.URL) -> None:
    """Resolve the host the way httpcore will (anyio's worker thread) before the clock starts:
    the first use imports anyio's backend and starts the thread, ~60 ms that would otherwise
    delay the first sends."""
    with contextlib.suppress(OSError):
        await anyio.to_thread.run_sync(socket.getaddrinfo, url.host, url.port or 80)


async def run(
    url: str,
    plan: RunPlan,
    factory: PayloadFactory,
    recorder_ready: Callable[[Recorder], None] | None = None,
    progress: TextIO | None = sys.stderr,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Recorder:
    """Run the plan against `url` and return the recorder (also handed out at once through
    `recorder_ready`, so an interrupted run can still be reported)."""
    cap = plan.concurrency or plan.max_in_flight
    timeout = httpx.Timeout(plan.timeout)
    # One connection per possible in-flight request: a smaller pool would queue silently.
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
    # trust_env=False: a proxy from the environment must not sit between loadgen and the gateway.
    # With API keys on the gateway (compose), LUNGWATCH_LOADGEN_API_KEY is sent on every call.
    api_key = os.environ.get("LUNGWATCH_LOADGEN_API_KEY", "")
    headers = {"X-API-Key": api_key} if api_key else None
    async with httpx.AsyncClient(
        base_url=url,
        timeout=timeout,
        limits=limits,
        trust_env=False,
        transport=transport,
        headers=headers,
    ) as client:
        await warm_up(client.base_url)
        loop = asyncio.get_running_loop()
        recorder = Recorder(start=loop.time())
        if recorder_ready is not None:
            recorder_ready(recorder)
        runner = Runner(client, factory, recorder, plan.hooks, plan.sticky_header)
        ticker = asyncio.create_task(report_progress(recorder, progress)) if progress else None
        try:
            if plan.concurrency is not None:
                await runner.closed_loop(plan.concurrency, plan.duration, plan.requests)
            else:
                assert plan.offsets is not None
                await runner.open_loop(
                    plan.offsets, plan.requests, plan.max_in_flight, plan.on_full
                )
        finally:
            if ticker is not None:
                ticker.cancel()
                if progress is not None and progress.isatty():
                    progress.write("\n")
    return recorder
