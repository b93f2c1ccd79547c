"""loadgen scheduling: profiles give the right arrivals, the open loop keeps them whatever the
server does, and latency counts from the scheduled send time (no network: a mock transport)."""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import re

import httpx
import pytest

from loadgen import profiles
from loadgen.payloads import LabelledRow, Mix, PayloadFactory, RowSource
from loadgen.runner import RunPlan, run
from loadgen.stats import CONNECTION, TIMEOUT, Recorder, summarize_histogram

ROW = LabelledRow(tuple([30, 1] + [2] * 21), 1)
ANSWER = {"prediction": 1, "label": "Medium", "prediction_probabilities": [0, 1, 0]}


def test_constant_rate_is_evenly_spaced_and_exact() -> None:
    offsets = list(profiles.schedule(profiles.constant(50, 60)))
    assert len(offsets) == 3000
    assert offsets[:3] == pytest.approx([0, 0.02, 0.04])
    assert offsets[-1] == pytest.approx(59.98)


def test_unbounded_constant_rate_goes_on() -> None:
    offsets = list(itertools.islice(profiles.schedule(profiles.constant(4)), 100))
    assert offsets[-1] == pytest.approx(99 / 4)


def test_ramp_follows_the_integral_of_its_rate() -> None:
    offsets = list(profiles.schedule(profiles.ramp(10, 50, 10)))
    assert len(offsets) == pytest.approx(300, abs=1)  # (10 + 50) / 2 * 10
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert gaps[0] == pytest.approx(1 / 10, rel=0.05)
    assert gaps[-1] == pytest.approx(1 / 50, rel=0.05)
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(gaps))  # ever faster
    down = list(profiles.schedule(profiles.ramp(50, 0, 4)))
    assert len(down) == pytest.approx(100, abs=1) and down[-1] < 4


def test_steps_change_rate_at_the_boundaries() -> None:
    offsets = list(profiles.schedule(profiles.steps([(10, 2), (0, 1), (40, 1)])))
    assert sum(t < 2 for t in offsets) == 20
    assert not any(2 <= t < 3 for t in offsets)  # a pause
    assert sum(t >= 3 for t in offsets) == 40
    assert offsets[-1] < 4


def _factory() -> PayloadFactory:
    return PayloadFactory(RowSource([ROW]), Mix({}), random.Random(0))


def _slow_transport(delay: float) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return httpx.Response(200, json=ANSWER)

    return httpx.MockTransport(handler)


def _run(plan: RunPlan, transport: httpx.AsyncBaseTransport) -> Recorder:
    return asyncio.run(run("http://gateway.test", plan, _factory(), None, None, transport))


def test_open_loop_keeps_the_schedule_while_answers_are_slow() -> None:
    # 40 requests due over 0.4 s, each answered after 0.3 s: a closed loop with the same
    # number of users would have sent a handful; the open loop sends all on time.
    plan = RunPlan(offsets=profiles.schedule(profiles.constant(100, 0.4)))
    recorder = _run(plan, _slow_transport(0.3))
    assert recorder.sent == 40 and recorder.status[200] == 40
    assert recorder.first_sent is not None and recorder.last_sent is not None
    assert recorder.last_sent - recorder.first_sent < 1.0  # not 40 x 0.3 s
    assert summarize_histogram(recorder.latency)["p50"] >= 0.3


def test_latency_counts_queueing_behind_the_in_flight_cap() -> None:
    # One request at a time, each taking 50 ms, 20 due over 0.2 s: the service time stays
    # 50 ms but the last one waits for the 19 before it: ~1 s late, and it must show.
    plan = RunPlan(offsets=profiles.schedule(profiles.constant(100, 0.2)), max_in_flight=1)
    recorder = _run(plan, _slow_transport(0.05))
    assert recorder.sent == 20 and recorder.late >= 15
    summary = summarize_histogram(recorder.latency)
    assert summary["max"] >= 0.7
    assert summary["p50"] >= 0.3
    assert recorder.error_rate() == 0


def test_drop_mode_counts_what_the_cap_refused() -> None:
    plan = RunPlan(
        offsets=profiles.schedule(profiles.constant(100, 0.2)), max_in_flight=1, on_full="drop"
    )
    recorder = _run(plan, _slow_transport(0.05))
    assert recorder.sent + recorder.dropped == 20
    assert recorder.dropped >= 10
    assert recorder.error_rate() == pytest.approx(recorder.dropped / 20)


def test_requests_limit_the_run() -> None:
    plan = RunPlan(offsets=profiles.schedule(profiles.constant(200)), requests=7)
    assert _run(plan, _slow_transport(0)).sent == 7


def test_closed_loop_sends_exactly_the_requests_asked() -> None:
    plan = RunPlan(concurrency=3, requests=10)
    recorder = _run(plan, _slow_transport(0.01))
    assert recorder.sent == 10 == recorder.status[200]


def test_closed_loop_stops_at_its_duration() -> None:
    plan = RunPlan(concurrency=2, duration=0.3)
    recorder = _run(plan, _slow_transport(0.05))
    assert 2 <= recorder.sent <= 14  # two users, ~6 answers each at most


def test_transport_failures_are_counted_not_raised() -> None:
    failures = itertools.cycle(
        [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), None, None]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        failure = next(failures)
        if failure is not None:
            raise failure
        return httpx.Response(503, json={"error": "model_unavailable", "message": "down"})

    plan = RunPlan(offsets=profiles.schedule(profiles.constant(200)), requests=8)
    recorder = _run(plan, httpx.MockTransport(handler))
    assert recorder.errors[CONNECTION] == 2
    assert recorder.errors[TIMEOUT] == 2
    assert recorder.status[503] == 4
    assert recorder.unexpected == 8 and recorder.error_rate() == 1
    # A refused connection has no latency worth reporting; a timeout does.
    assert recorder.latency.get_total_count() == 6


def test_progress_line_once_a_second_while_running() -> None:
    stream = io.StringIO()
    plan = RunPlan(offsets=profiles.schedule(profiles.constant(20, 1.3)))
    recorder = asyncio.run(
        run("http://gateway.test", plan, _factory(), None, stream, _slow_transport(0.01))
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1  # a non-terminal gets one line per second, no carriage returns
    # 20/s for one second: one request either side of the boundary on a busy machine
    assert re.match(
        r"\[   1\.0s\] sent (?:19|20|21) \((?:19|20|21)\.\d/s\) 2xx \d+ 4xx 0 5xx 0", lines[0]
    )
    assert "p50 " in lines[0] and "p99 " in lines[0]
    assert recorder.sent == 26
