"""Reconciliation: the gateway's request counters in Prometheus against what loadgen sent."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadgen.stats import OTHER, TIMEOUT, Recorder

TOTAL = "api_total_requests_total"
SUCCESSFUL = "api_successful_requests_total"
FAILED = "api_failed_requests_total"
COUNTERS: tuple[str, ...] = (TOTAL, SUCCESSFUL, FAILED)
# `--quality`: the gateway's data-quality counter, compared per (feature, kind) with the tally.
QUALITY = "model_input_quality_total"


def quality_key(feature: str, kind: str) -> str:
    """How a (feature, kind) series is named in snapshots and in the reconciliation."""
    return f'{QUALITY}{{feature="{feature}",kind="{kind}"}}'


class PrometheusError(RuntimeError):
    """Prometheus could not be queried, or never scraped what it had to."""


@dataclass(frozen=True)
class Snapshot:
    """Counter sums over every label set, each series read at its latest scrape."""

    at: float  # wall-clock seconds: every series read was scraped at or after this
    values: dict[str, int]


def _key(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(metric.items()))


def _selector(name_regex: str, extra: str) -> str:
    matchers = [f'__name__=~"{name_regex}"']
    if extra.strip():
        matchers.append(extra.strip())
    return "{" + ",".join(matchers) + "}"


class PrometheusProbe:
    """Reads raw counter samples (not `increase()`, which extrapolates) from the HTTP API.

    Counters start at 0 when the gateway starts and series appear on first use, so a series
    missing from the baseline counts as 0. `selector` (label matchers such as
    `job="gateway"`) restricts the targets, e.g. when the same counters also arrive through
    the Collector and would otherwise be counted twice. With `quality`, the data-quality
    counter is read too, summed per (feature, kind).
    """

    def __init__(
        self,
        url: str,
        selector: str = "",
        timeout: float = 90.0,
        poll: float = 0.25,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        quality: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.selector = selector
        self.names = (*COUNTERS, QUALITY) if quality else COUNTERS
        self.timeout = timeout
        self.poll = poll
        self.client = client or httpx.Client(timeout=10.0, trust_env=False)
        self.clock = clock

    def _query(self, query: str) -> list[dict[str, Any]]:
        try:
            response = self.client.get(f"{self.url}/api/v1/query", params={"query": query})
            payload = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusError(f"cannot query Prometheus at {self.url}: {exc}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {query!r}: {payload.get('error')}")
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def read(self, after: float) -> Snapshot | None:
        """The counters once each has a sample scraped after `after` (or, before the gateway
        has counted anything, once its targets have been scraped since); None until then."""
        counters = _selector("|".join(self.names), self.selector)
        # An instant query skips series gone stale (e.g. from a restarted gateway); a range
        # query gives each sample's own scrape timestamp, which an instant query hides.
        live = {_key(s["metric"]) for s in self._query(counters)}
        samples = self._query(_selector("up|" + "|".join(self.names), self.selector) + "[5m]")
        values = dict.fromkeys(COUNTERS, 0.0)
        stamps, scrapes = [], []
        for series in samples:
            if not series["values"]:
                continue
            ts, value = float(series["values"][-1][0]), float(series["values"][-1][1])
            name = series["metric"]["__name__"]
            if name == "up":
                scrapes.append(ts)
            elif _key(series["metric"]) in live:
                if name == QUALITY:
                    metric = series["metric"]
                    name = quality_key(metric.get("feature", ""), metric.get("kind", ""))
                values[name] = values.get(name, 0.0) + value
                stamps.append(ts)
        # Counters appear on first use; with none yet, a scrape of the targets stands for them.
        stamps = stamps or scrapes
        if not stamps or min(stamps) <= after:
            return None
        return Snapshot(min(stamps), {k: round(v) for k, v in values.items()})

    def wait(self, after: float) -> Snapshot:
        deadline = self.clock() + self.timeout
        while True:
            snapshot = self.read(after)
            if snapshot is not None:
                return snapshot
            if self.clock() > deadline:
                raise PrometheusError(
                    f"Prometheus at {self.url} has no scrape of the gateway's counters (or "
                    f"of targets matching {{{self.selector}}}) newer than {after:.3f} after "
                    f"{self.timeout:g}s: is the gateway a target?"
                )
            time.sleep(self.poll)

    def settled(self, after: float) -> Snapshot:
        """The first scrape after `after` whose counters the next scrape confirms unchanged
        (the gateway may count a request a moment after answering it)."""
        deadline = self.clock() + self.timeout
        current = self.wait(after)
        while True:
            following = self.wait(current.at)
            if following.values == current.values:
                return following
            if self.clock() > deadline:
                raise PrometheusError(
                    f"the counters in Prometheus at {self.url} kept changing for "
                    f"{self.timeout:g}s after the run: is other traffic reaching the gateway?"
                )
            current = following


@dataclass
class Reconciliation:
    before: Snapshot
    after: Snapshot
    observed: dict[str, int]
    expected: dict[str, tuple[int, int]]  # inclusive bounds; equal unless answers went missing
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "observed": self.observed,
            "expected": {k: list(v) for k, v in self.expected.items()},
            "before": self.before.values,
            "after": self.after.values,
            "problems": self.problems,
        }


def expected_counts(recorder: Recorder) -> dict[str, tuple[int, int]]:
    """What the gateway must have counted; a timeout, an aborted answer or a request still in
    flight may or may not have reached it, so each widens the range by one."""
    responses = recorder.responses
    ok = sum(n for code, n in recorder.status.items() if code == 200)
    unknown = recorder.errors[TIMEOUT] + recorder.errors[OTHER] + recorder.in_flight
    return {
        TOTAL: (responses, responses + unknown),
        SUCCESSFUL: (ok, ok + unknown),
        FAILED: (responses - ok, responses - ok + unknown),
    }


def reconcile(
    before: Snapshot,
    after: Snapshot,
    recorder: Recorder,
    quality: dict[tuple[str, str], tuple[int, int]] | None = None,
) -> Reconciliation:
    """`quality`: the data-quality tally's (low, high) per (feature, kind), when `--quality`
    asked for it; every other (feature, kind) series must not have moved."""
    observed = {k: after.values[k] - before.values[k] for k in COUNTERS}
    expected = expected_counts(recorder)
    problems = []
    for name in COUNTERS:
        low, high = expected[name]
        if not low <= observed[name] <= high:
            want = str(low) if low == high else f"{low}..{high}"
            diff = observed[name] - (low if observed[name] < low else high)
            problems.append(
                f"{name}: Prometheus counted {observed[name]}, loadgen expected {want} "
                f"(diff {diff:+d})"
            )
    if observed[TOTAL] != observed[SUCCESSFUL] + observed[FAILED]:
        problems.append(
            f"the gateway's counters disagree: total {observed[TOTAL]} != successful "
            f"{observed[SUCCESSFUL]} + failed {observed[FAILED]}"
        )
    if quality is not None:
        wanted = {quality_key(f, k): bounds for (f, k), bounds in quality.items()}
        moved = {
            k: after.values[k] - before.values.get(k, 0)
            for k in after.values
            if k.startswith(QUALITY + "{")
        }
        for key in sorted(set(wanted) | {k for k, n in moved.items() if n}):
            low, high = wanted.get(key, (0, 0))
            got = moved.get(key, 0)
            observed[key], expected[key] = got, (low, high)
            if not low <= got <= high:
                want = str(low) if low == high else f"{low}..{high}"
                problems.append(f"{key}: Prometheus counted {got}, loadgen expected {want}")
    return Reconciliation(before, after, observed, expected, problems)
