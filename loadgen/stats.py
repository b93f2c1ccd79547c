"""Outcomes of requests, the recorder that tallies them, and the report built from it."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

if TYPE_CHECKING:  # payloads imports loadgen.quality, which imports this module
    from loadgen.payloads import RequestSpec

# Error kinds for requests that got no HTTP response. A "connection" error never reached the
# gateway (refused, connect timeout, no pooled connection); a "timeout" or "other" error may
# have been received and counted by it, which makes reconciliation a range instead of a number.
TIMEOUT = "timeout"
CONNECTION = "connection"
OTHER = "other"

# Key of answers (and feedback) whose body named no model version: the gateway's own label value
# for a version it cannot name, so the two tallies compare key by key.
NO_VERSION = "unknown"

PERCENTILES: tuple[float, ...] = (50, 90, 95, 99, 99.9)
_US = 1_000_000
_MAX_US = 3600 * _US  # an hour; anything longer is clamped


def version_order(versions: Iterable[str]) -> list[str]:
    """Registry versions in numeric order ("9" before "10"), then any other names."""
    return sorted(versions, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _MAX_US, 3)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(int(seconds * _US), 1), _MAX_US))


def summarize_histogram(histogram: HdrHistogram) -> dict[str, float | int]:
    """Percentiles, max and mean in seconds, and the count."""
    count = histogram.get_total_count()
    out: dict[str, float | int] = {"count": count}
    for p in PERCENTILES:
        out[f"p{p:g}"] = histogram.get_value_at_percentile(p) / _US if count else 0.0
    out["max"] = histogram.get_max_value() / _US if count else 0.0
    out["mean"] = histogram.get_mean_value() / _US if count else 0.0
    return out


@dataclass
class Outcome:
    """What happened to one request; times are on the event loop's monotonic clock."""

    spec: RequestSpec
    scheduled: float  # when it was due: latency counts from here, so queueing is not hidden
    sent: float  # when it actually went out (later if the generator or the in-flight cap held it)
    finished: float
    status: int | None = None
    error: str | None = None
    predictions: tuple[int, ...] = ()
    body: Any = None  # the decoded JSON answer, for hooks (e.g. feedback on prediction_id)
    model_version: str | None = None  # the answer's top-level `model_version` (200s only)

    @property
    def latency(self) -> float:
        return self.finished - self.scheduled

    @property
    def expected(self) -> bool:
        """Did the request get what it deserved: 200 when valid, 422 when invalid."""
        if self.spec.valid:
            return self.status == 200
        return self.status == 422


@dataclass
class Recorder:
    """Tallies sends and outcomes as they happen; everything the report and progress line need."""

    start: float  # loop clock at the run start
    sent: int = 0
    dropped: int = 0  # due, but not sent because the in-flight cap was full (--on-full drop)
    late: int = 0  # due while the in-flight cap was full, so sent when a slot freed
    # Sent once another was answered (a repeated row's second), not on the schedule: counted
    # as sent and answered, left out of the send lag and the schedule's rate.
    follow_ups: int = 0
    completed: int = 0
    unexpected: int = 0
    status: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    kinds: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    labelled: int = 0
    correct: int = 0
    shifted_sent: int = 0  # rows moved by a drift profile, in requests sent
    shifted_answered: int = 0  # ... in requests answered with predictions (200)
    # 200 answers and the rows they carried, by the answer's model_version (NO_VERSION if none)
    by_model_version: Counter[str] = field(default_factory=Counter)
    rows_by_model_version: Counter[str] = field(default_factory=Counter)
    # --sticky-keys: every version that answered each key (a key sent to two versions is split)
    versions_by_sticky_key: defaultdict[str, set[str]] = field(
        default_factory=lambda: defaultdict(set)
    )
    latency: HdrHistogram = field(default_factory=new_histogram)
    valid_latency: HdrHistogram = field(default_factory=new_histogram)
    send_lag: HdrHistogram = field(default_factory=new_histogram)
    # (scheduled offset from start, latency, got what it deserved) for the plot
    timeline: list[tuple[float, float, bool]] = field(default_factory=list)
    first_scheduled: float | None = None
    last_scheduled: float | None = None
    first_sent: float | None = None
    last_sent: float | None = None
    last_finished: float | None = None

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed

    @property
    def responses(self) -> int:
        return sum(self.status.values())

    def _due(self, scheduled: float) -> None:
        if self.first_scheduled is None:
            self.first_scheduled = scheduled
        self.last_scheduled = scheduled

    def on_send(
        self, spec: RequestSpec, scheduled: float, sent: float, follow_up: bool = False
    ) -> None:
        if follow_up:
            self.follow_ups += 1
        else:
            self._due(scheduled)
            record_seconds(self.send_lag, sent - scheduled)
        self.sent += 1
        self.kinds[spec.kind]["sent"] += 1
        self.shifted_sent += spec.shifted
        if self.first_sent is None:
            self.first_sent = sent
        self.last_sent = sent

    def on_drop(self, spec: RequestSpec, scheduled: float) -> None:
        self._due(scheduled)
        self.dropped += 1
        self.unexpected += 1
        self.kinds[spec.kind]["dropped"] += 1

    def on_done(self, outcome: Outcome) -> None:
        self.completed += 1
        self.last_finished = outcome.finished
        kind = self.kinds[outcome.spec.kind]
        if outcome.status is not None:
            self.status[outcome.status] += 1
            kind[str(outcome.status)] += 1
        else:
            self.errors[outcome.error or OTHER] += 1
            kind[outcome.error or OTHER] += 1
        if not outcome.expected:
            self.unexpected += 1
        # A refused connection says nothing about the service's speed; everything else does,
        # including timeouts (a stall must not vanish from the percentiles).
        if outcome.error != CONNECTION:
            record_seconds(self.latency, outcome.latency)
            if outcome.spec.valid:
                record_seconds(self.valid_latency, outcome.latency)
            self.timeline.append(
                (outcome.scheduled - self.start, outcome.latency, outcome.expected)
            )
        if outcome.status == 200:
            self.shifted_answered += outcome.spec.shifted
            version = outcome.model_version or NO_VERSION
            self.by_model_version[version] += 1
            self.rows_by_model_version[version] += len(outcome.predictions)
            if outcome.spec.sticky_key is not None:
                self.versions_by_sticky_key[outcome.spec.sticky_key].add(version)
        if outcome.status == 200 and len(outcome.predictions) == len(outcome.spec.labels):
            for predicted, label in zip(outcome.predictions, outcome.spec.labels, strict=True):
                if label is not None:
                    self.labelled += 1
                    self.correct += predicted == label

    def status_classes(self) -> dict[str, int]:
        classes: Counter[str] = Counter()
        for code, n in self.status.items():
            classes[f"{code // 100}xx"] += n
        return {k: classes.get(k, 0) for k in ("2xx", "3xx", "4xx", "5xx")}

    def error_rate(self) -> float:
        """Share of due requests that did not get what they deserved (dropped ones included)."""
        due = self.sent + self.dropped
        return self.unexpected / due if due else 0.0

    def send_rate(self) -> float | None:
        """Achieved send rate: sends per second between the first and the last send."""
        if self.sent < 2 or self.first_sent is None or self.last_sent is None:
            return None
        span = self.last_sent - self.first_sent
        return (self.sent - 1) / span if span > 0 else None

    def target_rate(self) -> float | None:
        """The schedule's own rate over the same requests (None in closed loop, where sends are
        scheduled when the previous answer arrives)."""
        due = self.sent + self.dropped - self.follow_ups
        if due < 2 or self.first_scheduled is None or self.last_scheduled is None:
            return None
        span = self.last_scheduled - self.first_scheduled
        return (due - 1) / span if span > 0 else None

    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None
