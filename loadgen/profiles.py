"""Arrival schedules for open-loop runs: constant, step and ramp profiles as rate segments."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """A stretch of `duration` seconds whose rate moves linearly from `start_rate` to `end_rate`."""

    duration: float
    start_rate: float
    end_rate: float

    def expected(self) -> float:
        """Arrivals the segment holds (the integral of its rate)."""
        return (self.start_rate + self.end_rate) * self.duration / 2


@dataclass(frozen=True)
class Profile:
    """A sequence of segments; an infinite duration (constant rate only) means unbounded."""

    segments: tuple[Segment, ...]

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    def describe(self) -> str:
        parts = []
        for s in self.segments:
            if not math.isfinite(s.duration):
                parts.append(f"{s.start_rate:g}/s")
            elif s.start_rate == s.end_rate:
                parts.append(f"{s.start_rate:g}/s for {s.duration:g}s")
            else:
                parts.append(f"{s.start_rate:g}->{s.end_rate:g}/s over {s.duration:g}s")
        return ", then ".join(parts)


def constant(rate: float, duration: float = math.inf) -> Profile:
    return Profile((Segment(duration, rate, rate),))


def ramp(start_rate: float, end_rate: float, duration: float) -> Profile:
    return Profile((Segment(duration, start_rate, end_rate),))


def steps(pairs: Sequence[tuple[float, float]]) -> Profile:
    """Piecewise-constant rates from (rate, duration) pairs."""
    return Profile(tuple(Segment(d, r, r) for r, d in pairs))


def schedule(profile: Profile) -> Iterator[float]:
    """Send offsets in seconds from the run start: arrival k is where the cumulative rate is k.

    Arrivals are evenly spaced (deterministic, not Poisson), so a constant rate R over D
    seconds yields exactly R*D requests at 0, 1/R, 2/R, ... and the achieved rate is
    directly comparable with the target.
    """
    k = 0  # index of the next arrival
    before = 0.0  # arrivals (cumulative rate) accounted for by earlier segments
    origin = 0.0
    for seg in profile.segments:
        slope = (seg.end_rate - seg.start_rate) / seg.duration if math.isfinite(seg.duration) else 0
        total = seg.expected() if math.isfinite(seg.duration) else math.inf
        while k - before < total:
            x = k - before
            # Solve start_rate*t + slope*t^2/2 = x in the form stable for slope == 0 and < 0.
            root = math.sqrt(max(seg.start_rate**2 + 2 * slope * x, 0.0))
            denominator = seg.start_rate + root
            if x == 0:
                t = 0.0
            elif denominator > 0:
                t = 2 * x / denominator
            else:
                break
            if t >= seg.duration - 1e-9:
                break
            yield origin + t
            k += 1
        before += total
        origin += seg.duration
