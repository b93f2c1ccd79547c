"""Request bodies: valid ones drawn from dataset rows, and each kind of invalid input."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from contract.dataset import DATASET_PATH, read_rows
from contract.features import FEATURE_NAMES, FEATURES, N_FEATURES
from contract.wire import CANARY_STICKY_HEADER
from loadgen.quality import QUALITY_KINDS, REPEATED, QualityRows, Reference, RepeatKeys

PREDICT = "/predict"
PREDICT_BATCH = "/predict/batch"
# The gateway's default canary stickiness header (LUNGWATCH_GATEWAY_CANARY_STICKY_HEADER).
STICKY_HEADER = CANARY_STICKY_HEADER

# `--quality` kinds are valid requests too: rows the gateway answers and counts (loadgen.quality).
VALID_KINDS: tuple[str, ...] = ("features", "patient", "batch", *QUALITY_KINDS)
# The seed's two broken shapes (wrong count, non-numeric) and three more the gateway refuses.
INVALID_KINDS: tuple[str, ...] = (
    "wrong_count",
    "non_numeric",
    "out_of_range",
    "malformed_json",
    "empty_body",
)


@dataclass(frozen=True)
class LabelledRow:
    features: tuple[int, ...]  # in dataset (FEATURES) order
    label: int | None  # 0/1/2 when known
    shifted: bool = False  # moved off the dataset by a drift profile (`loadgen.drift`)


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request to send; `labels` are the true classes of the rows it carries."""

    kind: str
    path: str
    body: bytes
    labels: tuple[int | None, ...] = ()
    shifted: int = 0  # how many of its rows a drift profile shifted
    sticky_key: str | None = None  # sent in the sticky header (`--sticky-keys`)
    rows: tuple[tuple[int, ...], ...] = ()  # the feature rows it carries (valid kinds)
    # Sent once this one is answered, in the same in-flight slot (a repeated row's second).
    then: RequestSpec | None = None

    @property
    def valid(self) -> bool:
        return self.kind in VALID_KINDS


class RowSource:
    """Draws labelled rows; `loadgen.drift.DriftingRowSource` shifts them (`--drift`)."""

    def __init__(self, rows: Sequence[LabelledRow]) -> None:
        if not rows:
            raise ValueError("no rows to draw requests from")
        self.rows = list(rows)

    def draw(self, rng: random.Random) -> LabelledRow:
        return rng.choice(self.rows)


def load_rows(path: Path | None = None) -> list[LabelledRow]:
    return [LabelledRow(row.features, row.level) for row in read_rows(path or DATASET_PATH)]


@dataclass(frozen=True)
class Mix:
    """Shares of request kinds; whatever the invalid shares leave is valid traffic."""

    invalid: Mapping[str, float]
    batch_share: float = 0.0  # of valid requests, sent to /predict/batch
    patient_share: float = (
        0.5  # of rows, sent as {"patient": {...}} rather than {"features": [...]}
    )
    batch_size: int = 10
    # `--quality`: shares of requests that are single rows of each data-quality kind
    quality: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.invalid) - set(INVALID_KINDS)
        if unknown:
            raise ValueError(f"unknown invalid kinds: {sorted(unknown)}; known: {INVALID_KINDS}")
        total = sum(self.invalid.values())
        if any(v < 0 for v in self.invalid.values()) or total > 1:
            raise ValueError("invalid shares must be >= 0 and sum to at most 1")
        unknown = set(self.quality) - set(QUALITY_KINDS)
        if unknown:
            raise ValueError(f"unknown quality kinds: {sorted(unknown)}; known: {QUALITY_KINDS}")
        if any(v < 0 for v in self.quality.values()):
            raise ValueError("quality shares must be >= 0")
        if total + sum(self.quality.values()) > 1:
            raise ValueError("invalid and quality shares add up to more than 1")
        for name, share in (
            ("batch share", self.batch_share),
            ("patient share", self.patient_share),
        ):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")


def _row_object(row: LabelledRow, rng: random.Random, patient_share: float) -> dict[str, object]:
    if rng.random() < patient_share:
        return {"patient": dict(zip(FEATURE_NAMES, row.features, strict=True))}
    return {"features": list(row.features)}


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def wrong_count(row: LabelledRow, rng: random.Random) -> bytes:
    values = list(row.features)
    n = rng.choice([0, 1, N_FEATURES - 1, N_FEATURES + 1, 2 * N_FEATURES])
    values = (values * 2)[:n]
    return _dumps({"features": values})


def non_numeric(row: LabelledRow, rng: random.Random) -> bytes:
    values: list[object] = list(row.features)
    i = rng.randrange(N_FEATURES)
    values[i] = rng.choice(["invalid", "high", "", "3a", None, True, [1], {"v": 1}])
    if rng.random() < 0.5:
        return _dumps({"patient": dict(zip(FEATURE_NAMES, values, strict=True))})
    return _dumps({"features": values})


def out_of_range(row: LabelledRow, rng: random.Random) -> bytes:
    values = list(row.features)
    i = rng.randrange(N_FEATURES)
    f = FEATURES[i]
    values[i] = rng.choice([f.minimum - 1, f.maximum + 1, -1000, 10 * f.maximum + 1000])
    if rng.random() < 0.5:
        return _dumps({"patient": dict(zip(FEATURE_NAMES, values, strict=True))})
    return _dumps({"features": values})


def malformed_json(row: LabelledRow, rng: random.Random) -> bytes:
    text = _dumps({"features": list(row.features)}).decode()
    broken = rng.choice(
        [
            text[: rng.randrange(1, len(text) - 1)],  # truncated mid-body
            text.replace(",", ";", 1),  # a wrong separator
            text.replace('"features"', "features"),  # an unquoted key
            text + "}",  # trailing garbage
        ]
    )
    return broken.encode()


def empty_body(row: LabelledRow, rng: random.Random) -> bytes:
    return b""


INVALID_BUILDERS: dict[str, Callable[[LabelledRow, random.Random], bytes]] = {
    "wrong_count": wrong_count,
    "non_numeric": non_numeric,
    "out_of_range": out_of_range,
    "malformed_json": malformed_json,
    "empty_body": empty_body,
}


class StickyKeys:
    """A fixed set of `n` canary stickiness keys, and the draw of one per request.

    Keys and draws come from their own generator, seeded from `--seed`: the same seed gives
    the same keys in the same order, and turning keys on leaves the request sequence as it was.
    """

    def __init__(self, n: int, seed: int | None) -> None:
        if n < 1:
            raise ValueError("at least one sticky key")
        # A str seed is hashed with SHA-512 by random.seed: stable across runs and processes.
        self.rng = random.Random(None if seed is None else f"sticky-keys:{seed}")
        self.keys: tuple[str, ...] = tuple(f"k{v:012x}" for v in self.rng.sample(range(1 << 48), n))

    def draw(self) -> str:
        return self.rng.choice(self.keys)


class PayloadFactory:
    """Builds the next request according to a mix, from rows drawn out of a RowSource."""

    def __init__(
        self, rows: RowSource, mix: Mix, rng: random.Random, sticky: StickyKeys | None = None
    ) -> None:
        self.rows = rows
        self.mix = mix
        self.rng = rng
        self.sticky = sticky
        # `--quality`: the dataset's own rows are the reference the injected rows depart from
        # (and the tally's, loadgen.quality.QualityTally).
        self.quality_rows: QualityRows | None = None
        if any(share > 0 for share in mix.quality.values()):
            features = [row.features for row in rows.rows]
            self.quality_rows = QualityRows(Reference.of(features), features)
            self.quality_rows.check(kind for kind, share in mix.quality.items() if share > 0)
        self.repeat_keys = RepeatKeys()
        self.injected: Counter[str] = Counter()  # --quality requests built, by kind

    def next(self) -> RequestSpec:
        spec = self._next()
        if self.sticky is not None:
            # Drawn for every request, so the keys of the others stay where they were; a
            # repeated pair keeps its own key.
            key = self.sticky.draw()
            if spec.sticky_key is None:
                return replace(spec, sticky_key=key)
        return spec

    def _next(self) -> RequestSpec:
        pick = self.rng.random()
        for kind, share in self.mix.invalid.items():
            if pick < share:
                return RequestSpec(
                    kind, PREDICT, INVALID_BUILDERS[kind](self.rows.draw(self.rng), self.rng)
                )
            pick -= share
        for kind, share in self.mix.quality.items():
            if pick < share:
                self.injected[kind] += 1
                return self._quality(kind)
            pick -= share
        if self.rng.random() < self.mix.batch_share:
            drawn = [self.rows.draw(self.rng) for _ in range(self.mix.batch_size)]
            objs = [_row_object(r, self.rng, self.mix.patient_share) for r in drawn]
            return RequestSpec(
                "batch",
                PREDICT_BATCH,
                _dumps({"rows": objs}),
                tuple(r.label for r in drawn),
                sum(r.shifted for r in drawn),
                rows=tuple(r.features for r in drawn),
            )
        row = self.rows.draw(self.rng)
        obj = _row_object(row, self.rng, self.mix.patient_share)
        kind = "patient" if "patient" in obj else "features"
        return RequestSpec(
            kind, PREDICT, _dumps(obj), (row.label,), int(row.shifted), rows=(row.features,)
        )

    def _quality(self, kind: str) -> RequestSpec:
        if kind == REPEATED:
            # A row as any other (its label kept, for --feedback), sent twice under a key of
            # its own: the second is sent once the first is answered (loadgen.runner).
            row = self.rows.draw(self.rng)
            body = _dumps(_row_object(row, self.rng, self.mix.patient_share))
            second = RequestSpec(
                kind,
                PREDICT,
                body,
                (row.label,),
                int(row.shifted),
                sticky_key=self.repeat_keys.next(),
                rows=(row.features,),
            )
            return replace(second, then=second)
        # A row nobody observed: no label, so no accuracy and no feedback.
        assert self.quality_rows is not None  # built when a quality share is set
        features = self.quality_rows.row(kind, self.rng)
        obj = _row_object(LabelledRow(features, None), self.rng, self.mix.patient_share)
        return RequestSpec(kind, PREDICT, _dumps(obj), (None,), rows=(features,))
