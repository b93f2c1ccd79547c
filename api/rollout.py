"""A challenger beside the champion: which model answers a request (canary), and what the
challenger says about the requests the champion answered (shadow).

Canary: a request whose key falls in the share is answered by the challenger; the key is the
sticky header's value, or the request's rows, so one key (one patient row) always gets one
version while the share holds. A challenger call that fails is retried on the champion and
counted: a canary never fails a request the champion could answer.

Shadow: after the champion answered, the request's rows and the champion's classes go to a
bounded queue; one background task scores them on the challenger, up to `max_rows` a call,
and counts agreement. The caller's answer and latency never wait for it; a full queue drops
rows (counted), a failing challenger fails only its own calls (their own client, breaker and
deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson
from opentelemetry.metrics import CallbackOptions, Observation

from api.batching import MicroBatcher
from api.model_client import ModelAnswer, ModelClient, ModelServerError
from api.versions import version_label
from contract.features import LABELS
from contract.settings import GATEWAY_DEFAULTS
from contract.wire import CHALLENGER
from telemetry import Telemetry
from telemetry import instruments as ins

log = logging.getLogger("lungwatch.rollout")

OFF, SHADOW, CANARY = "off", "shadow", "canary"
# Sticky keys longer than this are refused (400): a key names a patient or a session, and an
# unbounded one would be hashed on every request.
MAX_STICKY_KEY_BYTES = 256
_BUCKETS = 10_000  # the share's resolution: 0.01 %


def bucket(key: bytes) -> int:
    """Where a key falls in 0..9,999: the same on every replica and every restart (no
    per-process salt), so a key's version does not change with the replica that serves it."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % _BUCKETS


@dataclass
class _Shadowed:
    rows: Sequence[Sequence[int]]
    classes: list[int]
    champion_version: str


class ShadowScorer:
    def __init__(
        self,
        client: ModelClient,
        telemetry: Telemetry,
        *,
        queue_rows: int = GATEWAY_DEFAULTS.shadow_queue_rows,
        max_rows: int = GATEWAY_DEFAULTS.shadow_max_rows,
        max_wait_seconds: float = GATEWAY_DEFAULTS.shadow_max_wait_ms / 1000,
    ) -> None:
        self.client = client
        self.queue_rows = queue_rows
        self.max_rows = max_rows
        self.max_wait = max_wait_seconds
        self._queue: deque[_Shadowed] = deque()
        self.queued_rows = 0
        self._ready = asyncio.Event()  # something is queued
        self._full = asyncio.Event()  # a call's worth is queued
        meter = telemetry.meter("lungwatch.gateway")
        self._rows = ins.create(meter, ins.SHADOW_ROWS)
        self._comparisons = ins.create(meter, ins.SHADOW_COMPARISONS)
        ins.create(meter, ins.SHADOW_QUEUE, callbacks=[self._observe_queue])
        self._outcomes = {
            o: {"outcome": o} for o in ("scored", "dropped", "failed", "no_challenger")
        }
        # (champion version, challenger version, champion class, challenger class) -> labels
        self._pairs: dict[tuple[str, str, int, int], dict[str, str]] = {}

    def submit(self, rows: Sequence[Sequence[int]], answer: ModelAnswer) -> None:
        """Queue rows the champion answered; O(1), never waits."""
        if self.queued_rows + len(rows) > self.queue_rows:
            self._rows.add(len(rows), self._outcomes["dropped"])
            return
        classes = [row.prediction for row in answer.rows]
        self._queue.append(_Shadowed(rows, classes, version_label(answer.model_version)))
        self.queued_rows += len(rows)
        self._ready.set()
        if self.queued_rows >= self.max_rows:
            self._full.set()

    async def run(self) -> None:
        """Score what is queued, a call at a time, for as long as the gateway runs."""
        while True:
            await self._ready.wait()
            if self.queued_rows < self.max_rows and self.max_wait > 0:
                # Wait for a call's worth (or the deadline): fewer, fuller calls cost the
                # gateway's event loop less per shadowed row.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
            batch = self._take()
            try:
                await self._score(batch)
            except Exception:  # a bug must not end shadowing; these rows are counted failed
                log.exception("shadow scoring failed")
                self._rows.add(sum(len(s.rows) for s in batch), self._outcomes["failed"])

    def _take(self) -> list[_Shadowed]:
        """Up to max_rows rows, in order; a request larger than what is left of the call is
        split, its rest staying first in the queue."""
        batch: list[_Shadowed] = []
        rows = 0
        while self._queue and rows < self.max_rows:
            item, room = self._queue[0], self.max_rows - rows
            if len(item.rows) > room:
                self._queue[0] = _Shadowed(
                    item.rows[room:], item.classes[room:], item.champion_version
                )
                item = _Shadowed(item.rows[:room], item.classes[:room], item.champion_version)
            else:
                self._queue.popleft()
            rows += len(item.rows)
            batch.append(item)
        self.queued_rows -= rows
        if not self._queue:
            self._ready.clear()
        if self.queued_rows < self.max_rows:
            self._full.clear()
        return batch

    async def _score(self, batch: list[_Shadowed]) -> None:
        rows = [row for item in batch for row in item.rows]
        try:
            answer = await self.client.predict(rows)
        except ModelServerError:
            self._rows.add(len(rows), self._outcomes["failed"])
            return
        if answer.role != CHALLENGER:  # the model server has no challenger loaded
            self._rows.add(len(rows), self._outcomes["no_challenger"])
            return
        challenger = version_label(answer.model_version)
        at = 0
        for item in batch:
            for champion_class in item.classes:
                key = (item.champion_version, challenger, champion_class,
                       answer.rows[at].prediction)  # fmt: skip
                self._comparisons.add(1, self._pair(key))
                at += 1
        self._rows.add(len(rows), self._outcomes["scored"])

    def _pair(self, key: tuple[str, str, int, int]) -> dict[str, str]:
        labels = self._pairs.get(key)
        if labels is None:
            champion_version, challenger_version, champion_class, challenger_class = key
            labels = self._pairs[key] = {
                "champion_version": champion_version,
                "challenger_version": challenger_version,
                "champion_class": LABELS[champion_class],
                "challenger_class": LABELS[challenger_class],
                "agree": "true" if champion_class == challenger_class else "false",
            }
        return labels

    def _observe_queue(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.queued_rows)]


class Rollout:
    """How a request is scored: by the champion's batcher, or under canary by the
    challenger's; under shadow, also queued for the challenger."""

    def __init__(
        self,
        champion: MicroBatcher,
        telemetry: Telemetry,
        *,
        mode: str = OFF,
        percent: float = GATEWAY_DEFAULTS.rollout_percent,
        challenger: MicroBatcher | None = None,
        shadow: ShadowScorer | None = None,
        sticky_header: str = GATEWAY_DEFAULTS.canary_sticky_header,
    ) -> None:
        if mode == CANARY and challenger is None:
            raise ValueError("canary needs the challenger's batcher")
        if mode == SHADOW and shadow is None:
            raise ValueError("shadow needs a shadow scorer")
        self.champion = champion
        self.challenger = challenger
        self.shadow = shadow
        self.mode = mode
        self.sticky_header = sticky_header
        self.threshold = round(percent * _BUCKETS / 100)
        self._fallbacks = ins.create(telemetry.meter("lungwatch.gateway"), ins.CANARY_FALLBACKS)

    def _in_share(self, rows: Sequence[Sequence[int]], sticky_key: str | None) -> bool:
        if self.threshold >= _BUCKETS:
            return True
        if self.threshold <= 0:
            return False
        key = sticky_key.encode() if sticky_key is not None else orjson.dumps(rows)
        return bucket(key) < self.threshold

    async def predict(
        self, rows: Sequence[Sequence[int]], sticky_key: str | None = None
    ) -> ModelAnswer:
        if self.mode == OFF:
            return await self.champion.predict(rows)
        picked = self._in_share(rows, sticky_key)
        if self.mode == CANARY and picked:
            assert self.challenger is not None
            try:
                return await self.challenger.predict(rows)
            except ModelServerError as exc:
                self._fallbacks.add(1, {"reason": exc.reason})
                return await self.champion.predict(rows)
        answer = await self.champion.predict(rows)
        if picked and self.shadow is not None:
            self.shadow.submit(rows, answer)
        return answer

    def background(self) -> list[Callable[[], object]]:
        """The coroutines the app runs while it serves (the shadow scorer's loop)."""
        return [self.shadow.run] if self.shadow is not None else []
