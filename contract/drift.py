"""Drift measure shared by training (the reference) and the gateway (recent inputs).

PSI, the population stability index, over each feature's value levels:
    PSI = sum over bins of (p_recent - p_reference) * ln(p_recent / p_reference)
Ordinal features use one bin per level (1 .. the feature's maximum); age uses decades
(<20, 20-29, ..., 70+). Counts get +0.5 (additive smoothing) so an empty bin does not make
the index infinite. Reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from contract.features import FEATURES, Feature

AGE_EDGES = (20, 30, 40, 50, 60, 70)
DRIFT_THRESHOLD = 0.25
SMOOTHING = 0.5


def n_bins(feature: Feature) -> int:
    if feature.name == "age":
        return len(AGE_EDGES) + 1
    return feature.maximum - feature.minimum + 1


def bin_of(feature: Feature, value: int) -> int:
    if feature.name == "age":
        return sum(value >= edge for edge in AGE_EDGES)
    return min(max(value, feature.minimum), feature.maximum) - feature.minimum


def bin_counts(rows: Iterable[Sequence[int]]) -> dict[str, list[int]]:
    """Per feature, how many rows fall in each bin."""
    counts = {f.name: [0] * n_bins(f) for f in FEATURES}
    for row in rows:
        for feature, value in zip(FEATURES, row, strict=True):
            counts[feature.name][bin_of(feature, int(value))] += 1
    return counts


def psi(reference: Sequence[int], recent: Sequence[int]) -> float:
    ref_total = sum(reference) + SMOOTHING * len(reference)
    cur_total = sum(recent) + SMOOTHING * len(recent)
    score = 0.0
    for ref, cur in zip(reference, recent, strict=True):
        p_ref = (ref + SMOOTHING) / ref_total
        p_cur = (cur + SMOOTHING) / cur_total
        score += (p_cur - p_ref) * math.log(p_cur / p_ref)
    return score


def psi_by_feature(
    reference: dict[str, list[int]], rows: Iterable[Sequence[int]]
) -> dict[str, float]:
    recent = bin_counts(rows)
    return {f.name: psi(reference[f.name], recent[f.name]) for f in FEATURES}
