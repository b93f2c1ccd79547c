"""Rollout (api.rollout, api.versions): the canary's share and stickiness, its fallback to the
champion, the shadow queue's bounds, merging and agreement counts, and bounded version labels.

No network: the batchers and the shadow's client are fakes that answer like the model server
(class = first feature % 3 unless told otherwise) and record what they were asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import orjson
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api import versions
from api.model_client import (
    CircuitOpen,
    ModelAnswer,
    ModelBadResponse,
    ModelServerError,
    ModelTimeout,
    ModelUnavailable,
    RowPrediction,
)
from api.rollout import CANARY, OFF, SHADOW, Rollout, ShadowScorer, bucket
from api.versions import MAX_VERSIONS, OTHER, UNKNOWN, version_label
from contract.features import EXAMPLE_FEATURES, LABELS
from contract.wire import CHALLENGER, CHAMPION
from telemetry import Telemetry, build_telemetry
from tests.unit.test_gateway import counter_values

GOOD = list(EXAMPLE_FEATURES)
PROBABILITIES = {0: (0.6, 0.3, 0.1), 1: (0.2, 0.6, 0.2), 2: (0.1, 0.3, 0.6)}


def row(n: int) -> list[int]:
    """A distinct valid-looking row per n (the first feature is the age, 14..73)."""
    return [14 + n % 60, *GOOD[1:22], 1 + n // 60 % 9]


def answer(
    rows: Sequence[Sequence[int]],
    version: str,
    role: str = CHAMPION,
    classify: Callable[[Sequence[int]], int] = lambda r: r[0] % 3,
) -> ModelAnswer:
    predictions = []
    for r in rows:
        c = classify(r)
        predictions.append(RowPrediction(c, LABELS[c], PROBABILITIES[c]))
    return ModelAnswer(predictions, model_version=version, role=role)


class FakeBatcher:
    """Stands in for a MicroBatcher: what Rollout needs of one is an async predict."""

    def __init__(self, version: str, role: str, error: ModelServerError | None = None) -> None:
        self.version = version
        self.role = role
        self.error = error
        self.calls: list[list[list[int]]] = []

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        self.calls.append([list(r) for r in rows])
        if self.error is not None:
            raise self.error
        return answer(rows, self.version, self.role)


class FakeClient:
    """Stands in for the shadow's ModelClient: records each call's rows; answers as the
    challenger (or as `role`), or fails with `error`."""

    def __init__(
        self,
        version: str = "4",
        role: str = CHALLENGER,
        error: Exception | None = None,
        classify: Callable[[Sequence[int]], int] = lambda r: r[0] % 3,
    ) -> None:
        self.version = version
        self.role = role
        self.error = error
        self.classify = classify
        self.calls: list[list[list[int]]] = []

    @property
    def rows_seen(self) -> int:
        return sum(len(c) for c in self.calls)

    async def predict(self, rows: Sequence[Sequence[int]]) -> ModelAnswer:
        self.calls.append([list(r) for r in rows])
        if self.error is not None:
            raise self.error
        return answer(rows, self.version, self.role, self.classify)


@pytest.fixture(autouse=True)
def fresh_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no version seen (the label table is per process)."""
    monkeypatch.setattr(versions, "_seen", {})


@pytest.fixture
def telemetry() -> Iterator[tuple[Telemetry, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    t = build_telemetry("unit", metric_readers=[reader], prometheus=False)
    yield t, reader
    t.shutdown()


def values(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return counter_values(type("A", (), {"reader": reader})(), name)  # type: ignore[arg-type]


def rollout(
    telemetry: Telemetry,
    mode: str,
    percent: float,
    champion: FakeBatcher,
    challenger: FakeBatcher | None = None,
    shadow: ShadowScorer | None = None,
) -> Rollout:
    return Rollout(
        champion,  # type: ignore[arg-type]
        telemetry,
        mode=mode,
        percent=percent,
        challenger=challenger,  # type: ignore[arg-type]
        shadow=shadow,
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until `condition` holds; the deadline only turns a hang into a failure."""
    try:
        async with asyncio.timeout(5.0):
            while not condition():
                await asyncio.sleep(0.001)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


@contextlib.asynccontextmanager
async def running(scorer: ShadowScorer) -> AsyncIterator[asyncio.Task[None]]:
    """The shadow loop as the app runs it, cancelled at the end as the app's shutdown does."""
    task = asyncio.create_task(scorer.run())
    try:
        yield task
    finally:
        assert not task.done(), "the shadow loop ended on its own"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()


# --- bucket -------------------------------------------------------------------------------


def test_bucket_is_deterministic_and_fixed() -> None:
    # Pinned values: a change of hashing (algorithm, digest size, byte order, modulus) moves
    # every sticky key and every patient row to another bucket, so callers switch versions
    # mid-canary and replicas of different builds disagree. Change these only on purpose.
    assert bucket(b"patient-42") == 3711
    assert bucket(b"") == 9876
    assert bucket(orjson.dumps([GOOD])) == 3050
    assert [bucket(b"patient-42") for _ in range(3)] == [3711] * 3
    assert all(0 <= bucket(f"k{i}".encode()) < 10_000 for i in range(1000))


def test_bucket_is_roughly_uniform() -> None:
    n, share = 20_000, 0.30
    picked = sum(bucket(f"session-{i}".encode()) < 3000 for i in range(n))
    bound = 4 * math.sqrt(share * (1 - share) / n)  # 4 binomial standard deviations
    assert abs(picked / n - share) < bound, picked / n
    # ... and over the whole range, not only below the threshold: ten equal tenths.
    tenths = [0] * 10
    for i in range(n):
        tenths[bucket(f"session-{i}".encode()) // 1000] += 1
    bound10 = 4 * math.sqrt(0.1 * 0.9 / n)
    assert all(abs(t / n - 0.1) < bound10 for t in tenths), tenths


# --- Rollout: canary ----------------------------------------------------------------------


def test_off_never_touches_the_challenger(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    champion, challenger = FakeBatcher("3", CHAMPION), FakeBatcher("4", CHALLENGER)
    shadow = ShadowScorer(FakeClient(), t)  # type: ignore[arg-type]
    r = rollout(t, OFF, 100.0, champion, challenger, shadow)

    async def run() -> list[ModelAnswer]:
        return [await r.predict([row(i)], sticky_key=f"k{i}") for i in range(50)]

    answers = asyncio.run(run())
    assert {(a.model_version, a.role) for a in answers} == {("3", CHAMPION)}
    assert len(champion.calls) == 50 and challenger.calls == []
    assert shadow.queued_rows == 0
    assert r.background() == [shadow.run]  # given a scorer, its loop runs; it is just never fed


@pytest.mark.parametrize(("percent", "to_challenger"), [(0.0, 0), (100.0, 200)])
def test_canary_at_0_and_100_percent(
    telemetry: tuple[Telemetry, InMemoryMetricReader], percent: float, to_challenger: int
) -> None:
    t, _ = telemetry
    champion, challenger = FakeBatcher("3", CHAMPION), FakeBatcher("4", CHALLENGER)
    r = rollout(t, CANARY, percent, champion, challenger)

    async def run() -> list[ModelAnswer]:
        # half with a sticky key, half keyed by their rows: neither matters at 0 or 100 %
        return [await r.predict([row(i)], f"k{i}" if i % 2 else None) for i in range(200)]

    answers = asyncio.run(run())
    assert len(challenger.calls) == to_challenger
    assert len(champion.calls) == 200 - to_challenger
    assert sum(a.role == CHALLENGER for a in answers) == to_challenger


def test_canary_at_30_percent_routes_each_key_by_its_bucket(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    champion, challenger = FakeBatcher("3", CHAMPION), FakeBatcher("4", CHALLENGER)
    r = rollout(t, CANARY, 30.0, champion, challenger)
    keys = [f"patient-{i}" for i in range(2000)]

    async def run() -> list[ModelAnswer]:
        return [await r.predict([GOOD], key) for key in keys]

    answers = asyncio.run(run())
    routed = [a.role == CHALLENGER for a in answers]
    assert routed == [bucket(k.encode()) < 3000 for k in keys]
    share = sum(routed) / len(keys)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(keys)), share
    assert len(challenger.calls) == sum(routed) and len(champion.calls) == len(keys) - sum(routed)
    assert all(a.model_version == ("4" if a.role == CHALLENGER else "3") for a in answers)


def test_a_sticky_key_picks_the_version_whatever_the_rows(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    champion, challenger = FakeBatcher("3", CHAMPION), FakeBatcher("4", CHALLENGER)
    r = rollout(t, CANARY, 30.0, champion, challenger)
    inside = next(f"s{i}" for i in range(100) if bucket(f"s{i}".encode()) < 3000)
    outside = next(f"s{i}" for i in range(100) if bucket(f"s{i}".encode()) >= 3000)
    # rows whose own key falls on the other side of each sticky key
    rows_out = next([row(i)] for i in range(500) if bucket(orjson.dumps([row(i)])) >= 3000)
    rows_in = next([row(i)] for i in range(500) if bucket(orjson.dumps([row(i)])) < 3000)

    async def run() -> tuple[set[str], set[str], str, str]:
        with_inside = {(await r.predict([row(i)], inside)).role for i in range(100)}
        with_outside = {(await r.predict([row(i)], outside)).role for i in range(100)}
        return (
            with_inside,
            with_outside,
            (await r.predict(rows_out, inside)).role,
            (await r.predict(rows_in, outside)).role,
        )

    with_inside, with_outside, out_rows_inside_key, in_rows_outside_key = asyncio.run(run())
    assert with_inside == {CHALLENGER} and with_outside == {CHAMPION}
    assert out_rows_inside_key == CHALLENGER and in_rows_outside_key == CHAMPION


def test_without_a_sticky_key_the_rows_are_the_key(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    champion, challenger = FakeBatcher("3", CHAMPION), FakeBatcher("4", CHALLENGER)
    r = rollout(t, CANARY, 30.0, champion, challenger)
    requests = [[row(i)] for i in range(300)] + [[row(i), row(i + 1)] for i in range(300)]

    async def run() -> list[list[str]]:
        # each request three times, interleaved: the same rows always get the same version
        return [[(await r.predict(rows)).role for rows in requests] for _ in range(3)]

    rounds = asyncio.run(run())
    assert rounds[0] == rounds[1] == rounds[2]
    assert rounds[0] == [
        CHALLENGER if bucket(orjson.dumps(rows)) < 3000 else CHAMPION for rows in requests
    ]
    assert 0 < rounds[0].count(CHALLENGER) < len(requests)  # both versions got some keys


@pytest.mark.parametrize(
    "error",
    [
        ModelUnavailable("refused"),
        CircuitOpen("open", retry_after=1.0),
        ModelTimeout("late"),
        ModelBadResponse("junk"),
    ],
    ids=lambda e: e.reason,
)
def test_a_failed_challenger_call_falls_back_to_the_champion_and_is_counted(
    telemetry: tuple[Telemetry, InMemoryMetricReader], error: ModelServerError
) -> None:
    t, reader = telemetry
    champion = FakeBatcher("3", CHAMPION)
    challenger = FakeBatcher("4", CHALLENGER, error=error)
    r = rollout(t, CANARY, 100.0, champion, challenger)

    async def run() -> list[ModelAnswer]:
        return [await r.predict([row(i)]) for i in range(3)]

    answers = asyncio.run(run())
    assert [(a.model_version, a.role) for a in answers] == [("3", CHAMPION)] * 3
    assert challenger.calls == champion.calls == [[row(i)] for i in range(3)]
    assert values(reader, "gateway_canary_fallbacks_total") == {(("reason", error.reason),): 3}


def test_when_the_champion_fails_too_its_error_is_the_answer(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    champion = FakeBatcher("3", CHAMPION, error=ModelTimeout("champion late"))
    challenger = FakeBatcher("4", CHALLENGER, error=ModelUnavailable("challenger down"))
    r = rollout(t, CANARY, 100.0, champion, challenger)
    with pytest.raises(ModelTimeout, match="champion late"):
        asyncio.run(r.predict([GOOD]))
    assert values(reader, "gateway_canary_fallbacks_total") == {
        (("reason", "model_unavailable"),): 1
    }


def test_a_canary_outside_the_share_leaves_no_fallback_count(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    champion = FakeBatcher("3", CHAMPION)
    challenger = FakeBatcher("4", CHALLENGER, error=ModelUnavailable("down"))
    r = rollout(t, CANARY, 0.0, champion, challenger)
    asyncio.run(r.predict([GOOD], "anyone"))
    assert challenger.calls == [] and values(reader, "gateway_canary_fallbacks_total") == {}


def test_a_mode_without_what_it_needs_is_refused(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    with pytest.raises(ValueError, match="challenger"):
        rollout(t, CANARY, 10.0, FakeBatcher("3", CHAMPION))
    with pytest.raises(ValueError, match="shadow"):
        rollout(t, SHADOW, 10.0, FakeBatcher("3", CHAMPION))
    canary = rollout(t, CANARY, 10.0, FakeBatcher("3", CHAMPION), FakeBatcher("4", CHALLENGER))
    assert canary.background() == []


# --- Rollout: shadow ----------------------------------------------------------------------


def test_shadow_answers_with_the_champion_and_queues_the_share(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    champion = FakeBatcher("3", CHAMPION)
    client = FakeClient()
    shadow = ShadowScorer(client, t, max_wait_seconds=0)  # type: ignore[arg-type]
    r = rollout(t, SHADOW, 30.0, champion, shadow=shadow)
    keys = [f"k{i}" for i in range(200)]

    async def run() -> list[ModelAnswer]:
        return [await r.predict([row(i)], key) for i, key in enumerate(keys)]

    answers = asyncio.run(run())
    assert {(a.model_version, a.role) for a in answers} == {("3", CHAMPION)}
    assert len(champion.calls) == 200
    assert client.calls == []  # scored by the background loop only, never on the request path
    assert shadow.queued_rows == sum(bucket(k.encode()) < 3000 for k in keys)
    assert r.background() == [shadow.run]


# --- ShadowScorer -------------------------------------------------------------------------


def test_a_full_shadow_queue_drops_and_counts(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    shadow = ShadowScorer(FakeClient(), t, queue_rows=5, max_rows=64)  # type: ignore[arg-type]
    three = [row(i) for i in range(3)]
    shadow.submit(three, answer(three, "3"))
    shadow.submit(three, answer(three, "3"))  # 6 > 5: all three dropped, none split off
    assert shadow.queued_rows == 3
    shadow.submit(three[:2], answer(three[:2], "3"))  # exactly full is accepted
    assert shadow.queued_rows == 5
    shadow.submit(three[:1], answer(three[:1], "3"))
    assert shadow.queued_rows == 5
    assert values(reader, "gateway_shadow_rows_total") == {(("outcome", "dropped"),): 4}
    assert values(reader, "gateway_shadow_queue_rows") == {(): 5}


def test_shadow_merges_queued_rows_into_calls_of_at_most_max_rows(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    client = FakeClient()
    shadow = ShadowScorer(client, t, max_rows=4, max_wait_seconds=0)  # type: ignore[arg-type]
    requests = [[row(2 * i), row(2 * i + 1)] for i in range(5)] + [[row(10)], [row(11)]]
    for rows in requests:
        shadow.submit(rows, answer(rows, "3"))

    async def run() -> None:
        async with running(shadow):
            await until(lambda: client.rows_seen == 12, "12 rows shadowed")

    asyncio.run(run())
    assert [len(c) for c in client.calls] == [4, 4, 4]  # 2+2 | 2+2 | 2+1+1: requests whole
    assert [r for c in client.calls for r in c] == [r for rows in requests for r in rows]
    assert shadow.queued_rows == 0
    assert values(reader, "gateway_shadow_rows_total") == {(("outcome", "scored"),): 12}
    assert values(reader, "gateway_shadow_queue_rows") == {(): 0}


def test_a_request_larger_than_max_rows_is_shadowed_in_calls_of_max_rows(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    client = FakeClient()
    shadow = ShadowScorer(client, t, max_rows=4, max_wait_seconds=0)  # type: ignore[arg-type]
    rows = [row(i) for i in range(10)]
    shadow.submit(rows, answer(rows, "3"))

    async def run() -> None:
        async with running(shadow):
            await until(lambda: client.rows_seen == 10, "10 rows shadowed")

    asyncio.run(run())
    assert max(len(c) for c in client.calls) <= 4, [len(c) for c in client.calls]


def test_shadow_waits_for_a_calls_worth_before_its_deadline(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, _ = telemetry
    client = FakeClient()
    # A deadline far beyond the test: only a full call's worth can release the rows.
    shadow = ShadowScorer(client, t, max_rows=4, max_wait_seconds=60.0)  # type: ignore[arg-type]

    async def run() -> None:
        async with running(shadow):
            first = [row(0), row(1)]
            shadow.submit(first, answer(first, "3"))
            for _ in range(20):  # the loop wakes and waits for more
                await asyncio.sleep(0)
            assert client.calls == [], "two rows of four were sent without waiting"
            second = [row(2), row(3)]
            shadow.submit(second, answer(second, "3"))
            await until(lambda: client.rows_seen == 4, "4 rows shadowed")

    asyncio.run(run())
    assert [len(c) for c in client.calls] == [4]


def test_shadow_sends_what_it_has_at_the_deadline(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    client = FakeClient()
    shadow = ShadowScorer(client, t, max_rows=64, max_wait_seconds=0.001)  # type: ignore[arg-type]

    async def run() -> None:
        async with running(shadow):
            shadow.submit([GOOD], answer([GOOD], "3"))
            await until(lambda: client.rows_seen == 1, "a lone row shadowed")

    asyncio.run(run())
    assert client.calls == [[GOOD]]
    assert values(reader, "gateway_shadow_rows_total") == {(("outcome", "scored"),): 1}


def test_shadow_counts_agreement_by_version_pair_and_class(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    # The challenger says High for every row; the champion's classes are first feature % 3.
    client = FakeClient(version="4", classify=lambda r: 2)
    shadow = ShadowScorer(client, t, max_rows=64, max_wait_seconds=0)  # type: ignore[arg-type]
    rows = [row(i) for i in range(9)]  # ages 14..22: classes 2,0,1,2,0,1,2,0,1
    shadow.submit(rows[:5], answer(rows[:5], "3"))
    shadow.submit(rows[5:], answer(rows[5:], "3"))

    async def run() -> None:
        async with running(shadow):
            await until(lambda: client.rows_seen == 9, "9 rows shadowed")

    asyncio.run(run())

    def key(champion_class: str, agree: str) -> tuple[tuple[str, str], ...]:
        return (
            ("agree", agree),
            ("challenger_class", "High"),
            ("challenger_version", "4"),
            ("champion_class", champion_class),
            ("champion_version", "3"),
        )

    assert values(reader, "model_shadow_comparisons_total") == {
        key("High", "true"): 3,
        key("Low", "false"): 3,
        key("Medium", "false"): 3,
    }
    assert values(reader, "gateway_shadow_rows_total") == {(("outcome", "scored"),): 9}


def test_shadow_comparisons_carry_bounded_version_labels(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    client = FakeClient(version="not-a-version", classify=lambda r: 0)
    shadow = ShadowScorer(client, t, max_wait_seconds=0)  # type: ignore[arg-type]
    shadow.submit([GOOD], ModelAnswer([RowPrediction(0, "Low", PROBABILITIES[0])], "12"))

    async def run() -> None:
        async with running(shadow):
            await until(lambda: client.rows_seen == 1, "a row shadowed")

    asyncio.run(run())
    ((labels, count),) = values(reader, "model_shadow_comparisons_total").items()
    assert dict(labels)["champion_version"] == "12"
    assert dict(labels)["challenger_version"] == UNKNOWN
    assert dict(labels)["agree"] == "true" and count == 1


@pytest.mark.parametrize(
    "error",
    [ModelUnavailable("down"), ModelTimeout("late"), RuntimeError("a bug in the client")],
    ids=["unavailable", "timeout", "bug"],
)
def test_a_failing_challenger_counts_failed_and_the_loop_goes_on(
    telemetry: tuple[Telemetry, InMemoryMetricReader], error: Exception
) -> None:
    t, reader = telemetry
    client = FakeClient(error=error)
    shadow = ShadowScorer(client, t, max_rows=4, max_wait_seconds=0)  # type: ignore[arg-type]
    rows = [row(i) for i in range(3)]

    async def run() -> None:
        async with running(shadow):
            shadow.submit(rows, answer(rows, "3"))
            await until(lambda: client.rows_seen == 3, "3 rows sent")
            await until(lambda: shadow.queued_rows == 0, "queue drained")
            client.error = None  # the challenger recovers: the same loop scores the next rows
            shadow.submit(rows[:2], answer(rows[:2], "3"))
            await until(lambda: client.rows_seen == 5, "2 more rows sent")
            await until(lambda: len(values(reader, "gateway_shadow_rows_total")) == 2, "scored")

    asyncio.run(run())
    assert values(reader, "gateway_shadow_rows_total") == {
        (("outcome", "failed"),): 3,
        (("outcome", "scored"),): 2,
    }
    comparisons = values(reader, "model_shadow_comparisons_total")
    assert sum(comparisons.values()) == 2  # only the recovered call's rows were compared


def test_an_answer_from_the_champion_counts_no_challenger(
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    t, reader = telemetry
    client = FakeClient(version="3", role=CHAMPION)  # the model server serves no challenger
    shadow = ShadowScorer(client, t, max_wait_seconds=0)  # type: ignore[arg-type]
    rows = [row(i) for i in range(4)]
    shadow.submit(rows, answer(rows, "3"))

    async def run() -> None:
        async with running(shadow):
            await until(lambda: client.rows_seen == 4, "4 rows sent")
            await until(lambda: bool(values(reader, "gateway_shadow_rows_total")), "counted")

    asyncio.run(run())
    assert values(reader, "gateway_shadow_rows_total") == {(("outcome", "no_challenger"),): 4}
    assert values(reader, "model_shadow_comparisons_total") == {}


# --- version labels -----------------------------------------------------------------------


def test_version_labels_keep_the_first_versions_then_say_other() -> None:
    first = [str(v) for v in range(1, MAX_VERSIONS + 1)]
    assert [version_label(v) for v in first] == first
    assert version_label(str(MAX_VERSIONS + 1)) == OTHER
    assert version_label("999999") == OTHER
    assert [version_label(v) for v in first] == first  # the seen ones keep their label
    for v in range(100, 10_100):  # many versions later, the table has not grown
        assert version_label(str(v)) == OTHER
    assert len(versions._seen) == MAX_VERSIONS


@pytest.mark.parametrize(
    "version",
    [None, "", "unknown", "abc", "1.0", "-1", "+1", " 1", "1 ", "1a", "0x1", "1234567", "3\n"],
)
def test_anything_but_a_registry_version_is_unknown(version: str | None) -> None:
    assert version_label(version) == UNKNOWN
    assert version_label(version) == UNKNOWN
    assert versions._seen == {}  # never takes one of the MAX_VERSIONS places
    assert version_label("5") == "5"


def test_unknown_values_do_not_push_real_versions_to_other() -> None:
    for i in range(100):
        version_label(f"v{i}")
    assert version_label("42") == "42"
