"""A circuit breaker for the model server: after a run of failures, fail fast, then probe.

closed --(N consecutive failures)--> open --(cooldown elapsed)--> half-open: one probe
request goes through; its success closes the circuit, its failure opens it again. While
open, requests get a 503 at once instead of each waiting for a connect or read deadline.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitOpenError(Exception):
    def __init__(self, retry_after: float, failures: int) -> None:
        super().__init__(f"circuit open after {failures} consecutive model-server failures")
        self.retry_after = retry_after


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()  # cheap; keeps the state coherent across threads too
        self.state = State.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def enabled(self) -> bool:
        return self.failure_threshold > 0

    def before_call(self) -> bool:
        """Raise CircuitOpenError to fail fast; return True when this call is the probe."""
        if not self.enabled:
            return False
        with self._lock:
            if self.state is State.CLOSED:
                return False
            remaining = self._opened_at + self.reset_seconds - self._clock()
            if self.state is State.OPEN and remaining <= 0:
                self.state = State.HALF_OPEN
            if self.state is State.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            raise CircuitOpenError(max(remaining, 0.0), self.failures)

    def record_success(self, probe: bool = False) -> None:
        with self._lock:
            self.failures = 0
            if probe or self.state is not State.OPEN:
                self.state = State.CLOSED
                self._probe_in_flight = False

    def record_failure(self, probe: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.failures += 1
            if probe or self.state is State.HALF_OPEN or self.failures >= self.failure_threshold:
                self.state = State.OPEN
                self._opened_at = self._clock()
                self._probe_in_flight = False

    def release_probe(self) -> None:
        """The probe ended without a verdict (e.g. cancelled): let another one try."""
        with self._lock:
            self._probe_in_flight = False


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1, as HTTP's Retry-After wants."""
    return str(max(1, math.ceil(seconds)))
