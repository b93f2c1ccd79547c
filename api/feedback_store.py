"""Who may still send feedback: ids already answered (Redis or here) and each API key's rate.

Every replica keeps its own bounded set of answered ids. With `LUNGWATCH_GATEWAY_FEEDBACK_REDIS_URL`
set, an id is also claimed in Redis with `SET NX` for the id's remaining lifetime, so a second
feedback is refused whichever replica receives it. Redis never fails a feedback call: when it
does not answer, the replica falls back to its own set (duplicates are then caught per replica
only), counts each such check, logs once when the store goes away and once when it is back,
and leaves Redis alone for `retry_seconds` so a dead store costs no time per request.

The rate of feedback is limited per API key on each replica (`KeyRateLimit`), with no shared
store: with N replicas behind a balancer a key gets up to N times the configured rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Observation

from contract.settings import GATEWAY_DEFAULTS, GatewaySettings
from telemetry import Telemetry
from telemetry import instruments as ins

log = logging.getLogger("lungwatch.feedback_store")

# Declared here until telemetry/instruments.py (owned elsewhere) takes them in.
DEDUPE_FALLBACKS = ins.InstrumentSpec(
    "gateway_feedback_store_fallbacks_total", ins.Kind.COUNTER, "",
    "Feedback duplicate checks made on this replica alone because the shared store (Redis) "
    "did not answer",
)  # fmt: skip
DEDUPE_STORE_UP = ins.InstrumentSpec(
    "gateway_feedback_store_up", ins.Kind.OBSERVABLE_GAUGE, "",
    "1 while the shared feedback store (Redis) answers, 0 while this replica checks "
    "duplicates alone; absent when no shared store is configured",
)  # fmt: skip
FEEDBACK_STORE_INSTRUMENTS = (DEDUPE_FALLBACKS, DEDUPE_STORE_UP)

KEY_PREFIX = "lungwatch:feedback:"


class LocalAnswered:
    """Answered ids with their expiry, bounded by count; expired ones are dropped first
    (their id would be refused as expired anyway)."""

    def __init__(
        self,
        max_size: int = GATEWAY_DEFAULTS.feedback_max_pending,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_size = max_size
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def claim(self, token: str, expires_at: float) -> bool:
        """True when `token` had no feedback here yet (and is now marked)."""
        now = self._clock()
        while self._expiry:
            oldest, expiry = next(iter(self._expiry.items()))
            if expiry > now and len(self._expiry) < self.max_size:
                break
            del self._expiry[oldest]
        if token in self._expiry:
            return False
        self._expiry[token] = expires_at
        return True

    def __len__(self) -> int:
        return len(self._expiry)


class KeyRateLimit:
    """A token bucket per API key id: `burst` calls at once, then `rate` a second.

    Memory is one entry per key id seen; ids come from the gateway's guard, which sets them
    only for configured keys, so the table is as small as the key list.
    """

    def __init__(
        self,
        rate: float = GATEWAY_DEFAULTS.feedback_rate_per_second,
        burst: int = GATEWAY_DEFAULTS.feedback_burst,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, api_key_id: str) -> int:
        """0 when the call may go ahead (one token spent), else whole seconds to wait."""
        now = self._clock()
        tokens, at = self._buckets.get(api_key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[api_key_id] = (tokens - 1, now)
            return 0
        self._buckets[api_key_id] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))


class SharedStore(Protocol):
    async def claim(self, token: str, ttl_seconds: float) -> bool: ...

    async def aclose(self) -> None: ...


class RedisStore:
    """`SET key 1 NX PX ttl`: one round trip, atomic across replicas."""

    def __init__(self, url: str, timeout_seconds: float = 0.5) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries: a retry loop against a dead store would hold every feedback call.
        self._client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )

    async def claim(self, token: str, ttl_seconds: float) -> bool:
        stored = await self._client.set(
            KEY_PREFIX + token, b"1", nx=True, px=max(1, int(ttl_seconds * 1000))
        )
        return bool(stored)

    async def aclose(self) -> None:
        await self._client.aclose()


class AnsweredIds:
    """The duplicate check of /feedback: local set always, shared store when configured."""

    def __init__(
        self,
        telemetry: Telemetry,
        shared: SharedStore | None = None,
        *,
        max_local: int = GATEWAY_DEFAULTS.feedback_max_pending,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = LocalAnswered(max_local, clock)
        self.shared = shared
        self.retry_seconds = retry_seconds
        self._clock = clock
        self.shared_up = shared is not None
        self._skip_shared_until = 0.0
        meter = telemetry.meter("lungwatch.gateway")
        self._fallbacks = ins.create(meter, DEDUPE_FALLBACKS)
        ins.create(meter, DEDUPE_STORE_UP, callbacks=[self._observe_up])

    @classmethod
    def from_settings(cls, settings: GatewaySettings, telemetry: Telemetry) -> AnsweredIds:
        shared = RedisStore(settings.feedback_redis_url) if settings.feedback_redis_url else None
        return cls(telemetry, shared, max_local=settings.feedback_max_pending)

    async def claim(self, token: str, expires_at: float) -> bool:
        """True for the first feedback of `token` (fleet-wide while the shared store answers)."""
        if not self.local.claim(token, expires_at):
            return False
        if self.shared is None:
            return True
        now = self._clock()
        if now < self._skip_shared_until:
            self._fallbacks.add(1)
            return True
        try:
            first = await self.shared.claim(token, expires_at - now)
        except Exception as exc:  # any store failure degrades; it never fails the call
            self._fallbacks.add(1)
            self._skip_shared_until = now + self.retry_seconds
            if self.shared_up:
                self.shared_up = False
                log.warning(
                    "shared feedback store unavailable (%s): duplicates are caught on this "
                    "replica only until it answers again",
                    type(exc).__name__,
                )
            return True
        if not self.shared_up:
            self.shared_up = True
            log.info("shared feedback store answers again")
        return first

    def _observe_up(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.shared is None else [Observation(int(self.shared_up))]

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
