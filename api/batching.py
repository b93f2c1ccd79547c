"""Adaptive micro-batching: concurrent predictions share model-server calls.

A request that finds a free call slot (fewer than `max_calls_in_flight` calls in flight) is
sent at once, alone if nothing else is waiting: an idle service adds no latency. While every
slot is busy, requests queue; the queue is released as one call when a slot frees (`idle`),
when it holds `max_rows` rows (`full`), or when its oldest request has waited `max_wait`
(`wait_expired`). Per-call cost (HTTP, pandas, schema checks) dominates the model server's
time, so fuller calls mean more predictions per second.

A lone request (nothing queued, a call slot free) is sent at once from its own task, as
batching off would send it: no queue entry, no task, no future, no batch spans; its
`model_server.predict` span is the child of its SERVER span.

Tracing of a shared call: the call gets a `model_server.batch` span, child of a sampled
member (its first when none is) and linked to every request in it; each request gets a
`model_server.batched_predict` span, from enqueue to answer, linked to the batch span.
Every request keeps its own trace.

Time comes from `clock` (seconds, monotonic), so a test can move it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

from api.model_client import ModelAnswer, ModelClient
from contract.settings import GATEWAY_DEFAULTS
from telemetry import Telemetry
from telemetry import instruments as ins

_IDLE = {"reason": "idle"}


@dataclass(eq=False)
class _Request:
    rows: Sequence[Sequence[int]]
    future: asyncio.Future[ModelAnswer]
    enqueued: float
    enqueued_ns: int
    context: SpanContext
    batch_context: SpanContext | None = None
    batch_rows: int = 0
    reason: str = ""
    waited: float = 0.0


class MicroBatcher:
    def __init__(
        self,
        client: ModelClient,
        telemetry: Telemetry,
        *,
        enabled: bool = GATEWAY_DEFAULTS.batching,
        max_rows: int = GATEWAY_DEFAULTS.batch_max_rows,
        max_wait_seconds: float = GATEWAY_DEFAULTS.batch_max_wait_ms / 1000,
        max_calls_in_flight: int = GATEWAY_DEFAULTS.batch_max_calls_in_flight,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.client = client
        self.enabled = enabled
        self.max_rows = max_rows
        self.max_wait = max_wait_seconds
        self.max_calls_in_flight = max_calls_in_flight
        self._clock = clock
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self.in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        meter = telemetry.meter("lungwatch.gateway")
        self._tracer = telemetry.tracer("lungwatch.gateway")
        self._size = ins.create(meter, ins.BATCH_SIZE)
        self._wait = ins.create(meter, ins.BATCH_QUEUE_WAIT)
        self._releases = ins.create(meter, ins.BATCH_RELEASES)
        ins.create(meter, ins.BATCH_QUEUE_DEPTH, callbacks=[self._observe_depth])
        ins.create(meter, ins.BATCH_IN_FLIGHT, callbacks=[self._observe_in_flight])

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        if not self.enabled:
            return await self.client.predict(rows)
        if len(rows) <= self.max_rows:
            return await self._submit(rows)
        # A /predict/batch call larger than a model call is split: max_rows holds for all.
        parts = [rows[i : i + self.max_rows] for i in range(0, len(rows), self.max_rows)]
        answers = await asyncio.gather(*(self._submit(part) for part in parts))
        return ModelAnswer(
            rows=[row for answer in answers for row in answer.rows],
            model_version=answers[-1].model_version,
            role=answers[-1].role,
        )

    async def _submit(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        if not self._queue and self.in_flight < self.max_calls_in_flight:
            return await self._alone(rows)
        loop = asyncio.get_running_loop()
        request = _Request(
            rows=rows,
            future=loop.create_future(),
            enqueued=self._clock(),
            enqueued_ns=time.time_ns(),
            context=trace.get_current_span().get_span_context(),
        )
        self._queue.append(request)
        self._queued_rows += len(rows)
        self.release()
        try:
            return await request.future
        except asyncio.CancelledError:
            # The client went away while queued: leave nothing behind in the queue.
            if request in self._queue:
                self._queue.remove(request)
                self._queued_rows -= len(rows)
            raise
        finally:
            self._request_span(request)

    async def _alone(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        """A call for one request that found a free slot and an empty queue: it waited for
        nothing, so it needs no batch spans (two spans fewer for most requests at moderate
        load); the batch metrics still count it, as a call of its rows released `idle`."""
        self.in_flight += 1
        try:
            self._size.record(len(rows))
            self._releases.add(1, _IDLE)
            self._wait.record(0.0)
            return await self.client.predict(rows)
        finally:
            self.in_flight -= 1
            self.release()  # requests that queued meanwhile take the freed slot

    def release(self) -> None:
        """Send as many calls as the rules allow; arm the timer for what must wait.

        Called on every enqueue, every finished call and by the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            if self._queued_rows >= self.max_rows:
                reason = "full"
            elif self.in_flight < self.max_calls_in_flight:
                reason = "idle"
            else:
                delay = self._queue[0].enqueued + self.max_wait - self._clock()
                if delay > 0:
                    self._timer = asyncio.get_running_loop().call_later(delay, self.release)
                    return
                reason = "wait_expired"
            self._dispatch(self._take(), reason)

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        while self._queue and rows + len(self._queue[0].rows) <= self.max_rows:
            request = self._queue.popleft()
            rows += len(request.rows)
            batch.append(request)
        self._queued_rows -= rows
        return batch

    def _dispatch(self, batch: list[_Request], reason: str) -> None:
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._call(batch, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[_Request], reason: str) -> None:
        now = self._clock()
        rows = [row for request in batch for row in request.rows]
        self._size.record(len(rows))
        self._releases.add(1, {"reason": reason})
        for request in batch:
            request.waited = now - request.enqueued
            self._wait.record(request.waited)
        # A sampled member's trace, when there is one: under head sampling the batch span is
        # then recorded, and the model server's spans join a trace that is kept.
        parent_context = next((r.context for r in batch if r.context.trace_flags.sampled), None)
        parent = trace.set_span_in_context(NonRecordingSpan(parent_context or batch[0].context))
        links = [Link(r.context) for r in batch if r.context.is_valid]
        try:
            with self._tracer.start_as_current_span(
                "model_server.batch",
                context=parent,
                links=links,
                attributes={
                    "lungwatch.batch.rows": len(rows),
                    "lungwatch.batch.requests": len(batch),
                    "lungwatch.batch.release_reason": reason,
                },
            ) as span:
                for request in batch:
                    request.batch_context = span.get_span_context()
                    request.batch_rows = len(rows)
                    request.reason = reason
                try:
                    answer = await self.client.predict(rows)
                except Exception as exc:  # every request of a failed call fails the same way
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
                    return
            start = 0
            for request in batch:
                end = start + len(request.rows)
                if not request.future.done():
                    request.future.set_result(
                        ModelAnswer(answer.rows[start:end], answer.model_version, answer.role)
                    )
                start = end
        except BaseException:
            for request in batch:
                if not request.future.done():
                    request.future.cancel()
            raise
        finally:
            self.in_flight -= 1
            self.release()

    def _request_span(self, request: _Request) -> None:
        """The request's view of its call, from enqueue to answer, linked to the batch."""
        if request.batch_context is None or not request.context.is_valid:
            return
        span = self._tracer.start_span(
            "model_server.batched_predict",
            context=trace.set_span_in_context(NonRecordingSpan(request.context)),
            start_time=request.enqueued_ns,
            links=[Link(request.batch_context)],
            attributes={
                "lungwatch.batch.rows": request.batch_rows,
                "lungwatch.batch.release_reason": request.reason,
                "lungwatch.batch.queue_wait_seconds": request.waited,
            },
        )
        span.end()

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(self._queue))]

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.in_flight)]
