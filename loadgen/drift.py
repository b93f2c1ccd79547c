"""Shifted inputs (`--drift`): dataset rows moved away from the training distribution.

A profile is a list of explicit shifts, each on one feature: add a fixed amount, or push the
value to the top levels of the feature's scale. Every result is clamped to the range the
gateway accepts (`contract.features.FEATURES`), so a shifted row is still a valid request (200,
not 422). A shifted row has no true level: nobody observed that patient, so it carries no
label, is left out of the accuracy and gets no `--feedback` (unless `--drift-keep-labels`:
then it keeps the dataset row's level).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from contract.features import FEATURE_NAMES, FEATURES
from loadgen.payloads import LabelledRow, RowSource

_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class Shift:
    """One feature's change: `add` adds `amount`; `top` draws among its `amount` top levels."""

    feature: str
    kind: str  # "add" | "top"
    amount: int

    def __post_init__(self) -> None:
        if self.feature not in _INDEX:
            raise ValueError(f"unknown feature {self.feature!r}")
        if self.kind not in ("add", "top"):
            raise ValueError(f"unknown shift kind {self.kind!r}")
        if self.kind == "top" and self.amount < 1:
            raise ValueError("a `top` shift needs at least one level")

    def apply(self, value: int, rng: random.Random) -> int:
        spec = FEATURES[_INDEX[self.feature]]
        if self.kind == "add":
            shifted = value + self.amount
        else:
            shifted = rng.randint(max(spec.minimum, spec.maximum - self.amount + 1), spec.maximum)
        return min(max(shifted, spec.minimum), spec.maximum)

    def describe(self) -> str:
        spec = FEATURES[_INDEX[self.feature]]
        if self.kind == "add":
            return f"{self.feature} {self.amount:+d} (clamped to {spec.minimum}..{spec.maximum})"
        low = max(spec.minimum, spec.maximum - self.amount + 1)
        levels = f"{low}..{spec.maximum}" if low < spec.maximum else str(spec.maximum)
        return f"{self.feature} drawn from its top levels {levels}"


@dataclass(frozen=True)
class DriftProfile:
    name: str
    summary: str
    shifts: tuple[Shift, ...]

    def apply(self, features: Sequence[int], rng: random.Random) -> tuple[int, ...]:
        values = list(features)
        for shift in self.shifts:
            i = _INDEX[shift.feature]
            values[i] = shift.apply(values[i], rng)
        return tuple(values)

    def describe(self) -> str:
        return ", ".join(s.describe() for s in self.shifts)


PROFILES: dict[str, DriftProfile] = {
    p.name: p
    for p in (
        DriftProfile(
            "older-smokers",
            "older patients who smoke: the example issue 6 asks for",
            (
                Shift("age", "add", 25),
                Shift("smoking", "top", 2),
                Shift("passive_smoker", "top", 2),
            ),
        ),
        DriftProfile(
            "older",
            "age alone: only one feature's drift score should move",
            (Shift("age", "add", 25),),
        ),
        DriftProfile(
            "polluted",
            "an industrial catchment: air pollution and occupational hazards at their top",
            (Shift("air_pollution", "top", 2), Shift("occupational_hazards", "top", 2)),
        ),
    )
}
DEFAULT_PROFILE = "older-smokers"


class DriftingRowSource(RowSource):
    """Draws dataset rows and shifts a `share` of them by `profile`; shifted rows lose their
    label (unless `keep_labels`) and are marked `shifted`.

    `keep_labels` (`--drift-keep-labels`) simulates a covariate shift whose outcomes did not
    move: the shifted patient keeps the dataset row's level, so `--feedback` reports how the
    model fares on inputs it was not trained on (the realized accuracy the label-free
    estimate is compared with)."""

    def __init__(
        self,
        rows: Sequence[LabelledRow],
        profile: DriftProfile,
        share: float = 1.0,
        keep_labels: bool = False,
    ) -> None:
        super().__init__(rows)
        if not 0 <= share <= 1:
            raise ValueError("the drift share must be between 0 and 1")
        self.profile = profile
        self.share = share
        self.keep_labels = keep_labels

    def draw(self, rng: random.Random) -> LabelledRow:
        row = super().draw(rng)
        if self.share < 1 and rng.random() >= self.share:
            return row
        label = row.label if self.keep_labels else None
        return LabelledRow(self.profile.apply(row.features, rng), label, shifted=True)
