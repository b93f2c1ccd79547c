"""Statistics for tests and the benchmark: percentiles, spread over rounds, within-round ratios.

No I/O and no heavy imports: the load-generator subprocess imports this module too.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics.

    The same definition as numpy's default ("linear"), so figures can be re-derived from the
    raw latencies with any tool.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50/p90/p95/p99/max/mean of latencies given in seconds."""
    if not latencies_s:
        return {}
    ordered = sorted(latencies_s)
    ms = [v * 1000 for v in ordered]
    return {
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def poisson_schedule(rate: float, duration_s: float, seed: int) -> list[float]:
    """Send offsets (s) of a Poisson arrival process; the same seed gives every system the
    same schedule, so open-loop runs differ only by the server."""
    if rate <= 0 or duration_s <= 0:
        return []
    rng = random.Random(seed)
    offsets: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over rounds."""

    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median and min–max of the values that exist (a round can miss a figure)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


def per_round_ratios(
    rounds: Sequence[Mapping[str, float | None]],
    numerator: str,
    denominator: str,
    combine: Callable[[float, float], float] | None = None,
) -> list[float | None]:
    """numerator/denominator computed inside each round (None when either is missing).

    Ratios are taken within a round, not between medians, because the two systems of one
    round share the machine's state at that moment (thermal, page cache, noisy neighbours).
    `combine` replaces division, e.g. a difference for the one-at-a-time target.
    """
    out: list[float | None] = []
    op = combine or (lambda a, b: a / b)
    for figures in rounds:
        a = figures.get(numerator)
        b = figures.get(denominator)
        if a is None or b is None or (combine is None and b == 0):
            out.append(None)
        else:
            out.append(op(a, b))
    return out


@dataclass(frozen=True)
class Target:
    """One target of issue 7: a per-round figure compared with a bound."""

    key: str
    text: str
    numerator: str
    denominator: str
    figure: str  # which per-round figure of each system feeds the comparison
    bound: float
    at_least: bool  # True: value ≥ bound is met; False: value ≤ bound is met
    difference: bool = False  # numerator − denominator instead of numerator / denominator
    unit: str = "×"


def evaluate_target(
    target: Target, rounds: Sequence[Mapping[str, Mapping[str, float | None]]]
) -> dict[str, Any]:
    """Met or not from the median of the within-round values, with their spread."""
    figures = [
        {system: values.get(target.figure) for system, values in round_.items()}
        for round_ in rounds
    ]
    combine = (lambda a, b: a - b) if target.difference else None
    values = per_round_ratios(figures, target.numerator, target.denominator, combine)
    return verdict(target, values)


def verdict(target: Any, values: Sequence[float | None]) -> dict[str, Any]:
    """A target (anything with key, text, bound, at_least, unit) met or not from the median
    of its per-round values, with their spread."""
    summary = spread(values)
    met: bool | None = None
    if summary is not None:
        met = summary.median >= target.bound if target.at_least else summary.median <= target.bound
    return {
        "key": target.key,
        "text": target.text,
        "bound": target.bound,
        "at_least": target.at_least,
        "unit": target.unit,
        "per_round": values,
        "value": summary.as_dict() if summary else None,
        "met": met,
    }
