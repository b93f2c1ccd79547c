"""Counters and gauges kept as plain numbers, handed to the SDK when a reader collects.

Why not the SDK's synchronous Counter and Gauge: each `add`/`set` builds a Measurement,
hashes its attributes, takes a lock and offers an exemplar, once per metric reader (two in
the gateway: /metrics and OTLP). Profiled at 64 connections, the gateway's ~9 such records
per prediction cost ~180 µs of its ~1.3 ms (docs/performance.md). Here a record is a dict
update under a lock (under 1 µs), and an observable instrument reports the numbers once per
collection. Both paths export the same thing as before: a counter is a monotonic cumulative
sum, a gauge the last value set. They carry no exemplars; only the latency histograms do,
and those stay synchronous (a histogram has no observable form).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

Attributes = Mapping[str, str] | None
_Key = frozenset[tuple[str, str]]
_NO_ATTRIBUTES: _Key = frozenset()


def _key(attributes: Attributes) -> _Key:
    return frozenset(attributes.items()) if attributes else _NO_ATTRIBUTES


class _Tally:
    def __init__(
        self, create_observable: Callable[..., Any], name: str, unit: str, description: str
    ) -> None:
        self._values: dict[_Key, float] = {}
        # The event loop records; a reader's thread (OTLP export) collects; a threadpool
        # route may record too. Uncontended, the lock costs ~0.1 µs. Label values come from
        # fixed sets (tests/unit/test_refusals.py), so the dict stays small.
        self._lock = threading.Lock()
        create_observable(name, callbacks=[self._observe], unit=unit, description=description)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._values.items())
        return [Observation(value, dict(key)) for key, value in values]


class CounterTally(_Tally):
    """A monotonic counter: `add(amount, attributes)`, as the SDK's Counter."""

    def __init__(self, meter: Meter, name: str, unit: str, description: str) -> None:
        super().__init__(meter.create_observable_counter, name, unit, description)

    def add(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        key = _key(attributes)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount


class GaugeTally(_Tally):
    """The last value set, per attribute set: `set(value, attributes)`, as the SDK's Gauge."""

    def __init__(self, meter: Meter, name: str, unit: str, description: str) -> None:
        super().__init__(meter.create_observable_gauge, name, unit, description)

    def set(self, value: float, attributes: Attributes = None, context: Any = None) -> None:
        key = _key(attributes)
        with self._lock:
            self._values[key] = value
