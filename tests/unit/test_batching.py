"""Micro-batching: a lone request goes at once, batches never exceed max_batch, failures and
traces reach every request of a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.app import create_app
from api.batching import MicroBatcher
from api.model_client import ModelAnswer, ModelUnavailable, RowPrediction
from contract.features import EXAMPLE_FEATURES
from contract.settings import GatewaySettings
from telemetry import build_telemetry
from tests.unit.test_gateway import counter_values

GOOD = list(EXAMPLE_FEATURES)


class SlowModel:
    """Answers after `delay`; class = first feature % 3, so answers can be told apart."""

    def __init__(self, delay: float = 0.02, error: Exception | None = None) -> None:
        self.delay = delay
        self.error = error
        self.calls: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        self.calls.append(len(rows))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            return ModelAnswer(
                [RowPrediction(r[0] % 3, "x", (0.2, 0.3, 0.5)) for r in rows], model_version="1"
            )
        finally:
            self.in_flight -= 1


class GatedModel:
    """Answers only once the test opens `gate`: the test, not a timer, decides when calls end."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[int] = []

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        self.calls.append(len(rows))
        self.entered.set()
        await self.gate.wait()
        return ModelAnswer([RowPrediction(0, "Low", (0.6, 0.3, 0.1)) for _ in rows], "1")


def batcher(
    model: SlowModel | GatedModel, **kwargs: object
) -> tuple[MicroBatcher, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    telemetry = build_telemetry("unit", span_exporter=spans)
    return MicroBatcher(model, telemetry, **kwargs), spans  # type: ignore[arg-type]


def test_a_lone_request_is_sent_at_once() -> None:
    model = SlowModel(delay=0.0)
    b, spans = batcher(model, max_wait_seconds=10.0)  # a wait that would show if it were taken

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with b._tracer.start_as_current_span("request"):
            await b.predict([GOOD])
        return loop.time() - start

    assert asyncio.run(run()) < 1.0
    assert model.calls == [1]
    # It waited for nothing and shared nothing: no batch spans, only its own.
    assert [s.name for s in spans.get_finished_spans()] == ["request"]


def test_concurrent_requests_share_calls_and_never_exceed_max_batch() -> None:
    model = SlowModel(delay=0.02)
    b, _ = batcher(model, max_rows=8, max_wait_seconds=0.005, max_calls_in_flight=2)

    async def run() -> list[ModelAnswer]:
        rows = [[i, *GOOD[1:]] for i in range(100)]
        return await asyncio.gather(*(b.predict([row]) for row in rows))

    answers = asyncio.run(run())
    assert [a.rows[0].prediction for a in answers] == [i % 3 for i in range(100)]  # in order
    assert sum(model.calls) == 100 and max(model.calls) <= 8
    assert len(model.calls) < 100  # calls were shared
    assert b.queue_depth == 0 and b.in_flight == 0


def test_a_large_batch_request_is_split_to_max_batch() -> None:
    model = SlowModel(delay=0.0)
    b, _ = batcher(model, max_rows=8)
    answer = asyncio.run(b.predict([[i, *GOOD[1:]] for i in range(20)]))
    assert [r.prediction for r in answer.rows] == [i % 3 for i in range(20)]
    assert sorted(model.calls) == [4, 8, 8]


def test_batching_off_sends_each_request_alone() -> None:
    model = SlowModel(delay=0.01)
    b, _ = batcher(model, enabled=False)

    async def run() -> None:
        await asyncio.gather(*(b.predict([GOOD]) for _ in range(10)))

    asyncio.run(run())
    assert model.calls == [1] * 10


def test_a_failed_batch_fails_every_request_and_the_queue_drains() -> None:
    model = SlowModel(delay=0.02, error=ModelUnavailable("down"))
    b, _ = batcher(model, max_rows=16, max_calls_in_flight=1)

    async def run() -> list[object]:
        return await asyncio.gather(*(b.predict([GOOD]) for _ in range(10)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, ModelUnavailable) for r in results)
    assert b.queue_depth == 0 and b.in_flight == 0


def test_cancelled_requests_leave_the_queue() -> None:
    async def run() -> None:
        model = GatedModel()
        b, _ = batcher(model, max_calls_in_flight=1, max_wait_seconds=10.0)
        first = asyncio.ensure_future(b.predict([GOOD]))
        await model.entered.wait()  # the one call slot is taken
        waiting = [asyncio.ensure_future(b.predict([GOOD])) for _ in range(5)]
        await asyncio.sleep(0)  # one turn of the loop: every task enqueues
        assert b.queue_depth == 5
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert b.queue_depth == 0
        model.gate.set()
        await first
        assert b.in_flight == 0 and model.calls == [1]

    asyncio.run(run())


def test_a_queued_request_is_released_when_its_wait_expires() -> None:
    """With the clock injected, the wait expires when the test says so, not after a sleep."""
    now = [1000.0]

    async def run() -> None:
        model = GatedModel()
        b, spans = batcher(
            model, max_calls_in_flight=1, max_wait_seconds=10.0, clock=lambda: now[0]
        )
        first = asyncio.ensure_future(b.predict([GOOD]))
        await model.entered.wait()
        second = asyncio.ensure_future(b.predict([GOOD]))
        await asyncio.sleep(0)
        now[0] += 9.9
        b.release()
        assert b.queue_depth == 1, "released before its wait expired"
        now[0] += 0.2
        b.release()
        assert b.queue_depth == 0 and b.in_flight == 2
        model.gate.set()
        await asyncio.gather(first, second)
        reasons = [
            str((s.attributes or {})["lungwatch.batch.release_reason"])
            for s in spans.get_finished_spans()
            if s.name == "model_server.batch"
        ]
        # The first went alone (no batch span); the second was released by its wait.
        assert reasons == ["wait_expired"]

    asyncio.run(run())


def test_every_request_trace_links_to_its_batch() -> None:
    model = SlowModel(delay=0.02)
    b, spans = batcher(model, max_calls_in_flight=1, max_wait_seconds=0.05)
    tracer = b._tracer

    async def one(i: int) -> None:
        with tracer.start_as_current_span(f"request-{i}"):
            await b.predict([GOOD])

    async def run() -> None:
        await asyncio.gather(*(one(i) for i in range(6)))

    asyncio.run(run())
    finished = spans.get_finished_spans()
    batches = {s.context.span_id: s for s in finished if s.name == "model_server.batch"}
    requests = {s.name: s for s in finished if s.name.startswith("request-")}
    per_request = [s for s in finished if s.name == "model_server.batched_predict"]
    # The first request finds the slot free and goes alone, without batch spans; the five
    # that queued behind it share calls, and each links to its call's batch span.
    assert len(per_request) == 5 and len(batches) < 5
    for span in per_request:
        assert span.parent is not None
        owner = next(r for r in requests.values() if r.context.span_id == span.parent.span_id)
        assert span.context.trace_id == owner.context.trace_id  # stays in its own trace
        (link,) = span.links
        batch = batches[link.context.span_id]
        assert owner.context.span_id in {lk.context.span_id for lk in batch.links}
        assert (batch.attributes or {})["lungwatch.batch.release_reason"] in {
            "idle",
            "full",
            "wait_expired",
        }
    rows = [(s.attributes or {})["lungwatch.batch.rows"] for s in batches.values()]
    assert sum(r for r in rows if isinstance(r, int)) == 5


async def _post_many(app: object, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await asyncio.gather(
            *(client.post("/predict", json={"features": GOOD}) for _ in range(n))
        )


@pytest.mark.parametrize("batching", [True, False])
def test_a_failing_batch_counts_each_request(batching: bool) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    telemetry = build_telemetry("unit", metric_readers=[reader])
    model = SlowModel(delay=0.02, error=ModelUnavailable("down"))
    settings = GatewaySettings(
        batching=batching, batch_max_calls_in_flight=1, circuit_failure_threshold=0
    )
    app = create_app(settings, telemetry=telemetry, model_client=model)  # type: ignore[arg-type]
    responses = asyncio.run(_post_many(app, 12))
    assert [r.status_code for r in responses] == [503] * 12
    holder = type("A", (), {"reader": reader})()
    failed = counter_values(holder, "api_failed_requests_total")  # type: ignore[arg-type]
    assert failed == {(("endpoint", "/predict"), ("reason", "model_unavailable")): 12}
    if batching:
        assert len(model.calls) < 12
