"""`--quality`: rows the gateway's data-quality counters must flag, and loadgen's own tally.

The gateway counts, on every row it answers, `model_input_quality_total{feature, kind}`
against the served model's training reference: `outside_training_range` (a value outside
the feature's range in the training rows), `at_range_edge` (outside it and equal to the
accepted range's own end: an age of 1 or 120), `unseen_profile` (the row is none of the
training rows' distinct profiles) and `repeated_row` (the row equals the previous row sent
with the same key: the sticky header's value, else the API key). `--quality` injects rows of
each kind, and the tally computes the kinds of *every* row sent, injected or not, against the
rows loadgen draws from (the dataset), the way the gateway computes them against the
training rows: when the served model was trained on exactly those rows (`model.train`
without `--holdout`, or `--dataset` holding the training rows), the tally is what the
counters must have grown by.

Repeats are sent as a pair: one row, then the same row again once the first is answered,
both with a key of their own that no other request uses, so no other row can come between
them on the gateway. Any other request that carries a key (`--sticky-keys`, or the API key
when `LUNGWATCH_LOADGEN_API_KEY` is set) may follow another row of that key in an order
loadgen cannot know (requests are concurrent), so those widen the expected count into a
range; so do requests that timed out or lost their answer (the gateway may have counted
them). Without keys and without lost answers the tally is exact.
"""

from __future__ import annotations

import os
import random
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from contract.drift import profile_digest, value_ranges
from contract.features import FEATURES
from loadgen.stats import OTHER, TIMEOUT, Outcome

OUTSIDE = "outside_training_range"
EDGE = "at_range_edge"
UNSEEN = "unseen_profile"
REPEATED = "repeated_row"
# The kinds --quality injects (each one a request kind in the report's `by kind` table).
QUALITY_KINDS: tuple[str, ...] = (OUTSIDE, EDGE, UNSEEN, REPEATED)
ROW = "row"  # the gateway's `feature` label of the row-level kinds
# The key the gateway compares rows under when a request carries no sticky key but an API
# key: loadgen sends one API key, so all such requests share it.
API_KEY = "<api key>"
# A new profile is one changed level away from a dataset row; a dataset where every such
# change lands on another dataset row would need this many tries to say so.
_UNSEEN_TRIES = 1000


@dataclass(frozen=True)
class Reference:
    """Each feature's range over the reference rows and their distinct profiles' digests
    (what `model.train` logs for the gateway: contract.drift.value_ranges, profile_digest)."""

    ranges: tuple[tuple[int, int], ...]  # in FEATURES order
    profiles: frozenset[str]
    rows: int

    @classmethod
    def of(cls, rows: Iterable[Sequence[int]]) -> Reference:
        rows = [tuple(int(v) for v in row) for row in rows]
        if not rows:
            raise ValueError("no reference rows")
        ranges = value_ranges(rows)
        return cls(
            tuple((ranges[f.name][0], ranges[f.name][1]) for f in FEATURES),
            frozenset(profile_digest(row) for row in rows),
            len(rows),
        )

    def kinds(self, row: Sequence[int]) -> list[tuple[str, str]]:
        """The (feature, kind) pairs the gateway counts for this row, repeats aside."""
        found = []
        for feature, value, (low, high) in zip(FEATURES, row, self.ranges, strict=True):
            if low <= value <= high:
                continue
            found.append((feature.name, OUTSIDE))
            if value in (feature.minimum, feature.maximum):
                found.append((feature.name, EDGE))
        if profile_digest(row) not in self.profiles:
            found.append((ROW, UNSEEN))
        return found


class QualityRows:
    """Builds the injected rows of the three row kinds from reference rows."""

    def __init__(self, reference: Reference, rows: Sequence[Sequence[int]]) -> None:
        self.reference = reference
        self.rows = [tuple(row) for row in rows]
        # Per feature: valid values outside the training range, at the accepted range's own
        # ends (edge) or strictly inside it (outside, not at the edge).
        self.edge: dict[int, list[int]] = {}
        self.outside: dict[int, list[int]] = {}
        for i, (feature, (low, high)) in enumerate(zip(FEATURES, reference.ranges, strict=True)):
            accepted = range(feature.minimum, feature.maximum + 1)
            beyond = [v for v in accepted if not low <= v <= high]
            ends = [v for v in beyond if v in (feature.minimum, feature.maximum)]
            inner = [v for v in beyond if v not in ends]
            if ends:
                self.edge[i] = ends
            if inner:
                self.outside[i] = inner
        # Levels a changed feature may take without leaving the training range.
        self._levels = [list(range(low, high + 1)) for low, high in reference.ranges]
        self._changeable = [i for i, levels in enumerate(self._levels) if len(levels) > 1]

    def check(self, kinds: Iterable[str]) -> None:
        """ValueError when the reference leaves no valid row of a requested kind."""
        for kind in kinds:
            if kind == EDGE and not self.edge:
                raise ValueError(
                    "at_range_edge: the rows already reach both ends of every accepted range"
                )
            if kind == OUTSIDE and not self.outside:
                raise ValueError(
                    "outside_training_range: no valid value lies outside the rows' ranges "
                    "short of the accepted range's own ends"
                )
            if kind == UNSEEN and not self._changeable:
                raise ValueError("unseen_profile: every feature takes a single value")

    def row(self, kind: str, rng: random.Random) -> tuple[int, ...]:
        base = list(rng.choice(self.rows))
        if kind in (EDGE, OUTSIDE):
            table = self.edge if kind == EDGE else self.outside
            i = rng.choice(sorted(table))
            base[i] = rng.choice(table[i])
            return tuple(base)
        if kind == UNSEEN:
            # One level changed, within the training range: a new combination of known values,
            # flagged as unseen and nothing else.
            for _ in range(_UNSEEN_TRIES):
                candidate = list(base)
                i = rng.choice(self._changeable)
                candidate[i] = rng.choice([v for v in self._levels[i] if v != base[i]])
                if profile_digest(candidate) not in self.reference.profiles:
                    return tuple(candidate)
                base = list(rng.choice(self.rows))
            raise ValueError(f"no unseen profile found in {_UNSEEN_TRIES} tries")
        raise ValueError(f"not a row kind: {kind!r}")


class RepeatKeys:
    """A key per repeated pair that no other request of this run (or of an earlier run) uses:
    a random run prefix, unrelated to --seed, so a rerun with the same seed never continues
    an earlier run's key on the gateway."""

    def __init__(self) -> None:
        self.prefix = f"q{secrets.token_hex(6)}"
        self.issued = 0

    def next(self) -> str:
        self.issued += 1
        return f"{self.prefix}-{self.issued:x}"


@dataclass
class _Pair:
    digest: str
    reached: bool  # answered 200: the gateway compared it, certainly


@dataclass
class QualityTally:
    """A ResponseHook: the (feature, kind) counts the gateway must have added, as a range.

    `expected` holds what is certain; `uncertain` what may come on top (lost answers, rows
    whose key other requests share)."""

    reference: Reference
    api_key: bool = field(default_factory=lambda: bool(os.environ.get("LUNGWATCH_LOADGEN_API_KEY")))
    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    uncertain: Counter[tuple[str, str]] = field(default_factory=Counter)
    _pairs: dict[str, _Pair] = field(default_factory=dict)
    # Ordinary requests with a key: per key, (first row's digest, last row's digest).
    _keyed: defaultdict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    async def __call__(self, client: httpx.AsyncClient, outcome: Outcome) -> None:
        self.observe(outcome)

    def observe(self, outcome: Outcome) -> None:
        spec = outcome.spec
        if not spec.valid or not spec.rows:
            return
        reached = outcome.status == 200
        # No answer, yet the request may have been answered (and counted) by the gateway.
        maybe = outcome.status is None and outcome.error in (TIMEOUT, OTHER)
        if not (reached or maybe):
            return  # refused, failed, or never connected: the gateway counted no row of it
        target = self.expected if reached else self.uncertain
        for row in spec.rows:
            target.update(self.reference.kinds(row))
        key = spec.sticky_key
        if key is None and self.api_key:
            key = API_KEY
        if key is None:
            return  # the gateway compares no row of it
        digests = [profile_digest(row) for row in spec.rows]
        # Within one request the gateway compares the rows in order: known, whatever the rest.
        target[(ROW, REPEATED)] += sum(a == b for a, b in zip(digests, digests[1:], strict=False))
        if spec.kind == REPEATED:
            first = self._pairs.get(key)
            if first is None:
                self._pairs[key] = _Pair(digests[-1], reached)
            elif first.digest == digests[0]:
                if first.reached and reached:
                    self.expected[(ROW, REPEATED)] += 1
                else:
                    self.uncertain[(ROW, REPEATED)] += 1
        else:
            self._keyed[key].append((digests[0], digests[-1]))

    def shared_key_bound(self) -> int:
        """How many ordinary keyed requests could have followed a row equal to their first:
        those whose first row is some other request's last row under the same key, plus, per
        key, one that could follow a row sent before this run."""
        bound = 0
        for requests in self._keyed.values():
            lasts = Counter(last for _, last in requests)
            follows = sum(lasts[first] - (first == last) > 0 for first, last in requests)
            bound += min(len(requests), follows + 1)
        return bound

    def summary(self, injected: Counter[str] | None = None) -> dict[str, Any]:
        uncertain = Counter(self.uncertain)
        uncertain[(ROW, REPEATED)] += self.shared_key_bound()
        return {
            "reference": {"rows": self.reference.rows, "profiles": len(self.reference.profiles)},
            "injected": {kind: (injected or Counter())[kind] for kind in QUALITY_KINDS},
            "expected": _nested(self.expected),
            "uncertain": _nested(+uncertain),
            "exact": not +uncertain,
        }


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (feature, kind), n in sorted(counts.items()):
        if n:
            out.setdefault(feature, {})[kind] = n
    return out


def flat(nested: dict[str, dict[str, int]]) -> dict[tuple[str, str], int]:
    """{feature: {kind: n}} as {(feature, kind): n}."""
    return {(f, k): n for f, kinds in nested.items() for k, n in kinds.items()}
