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


# --- a test, not only a score (issue 24) ----------------------------------------------------
# 1 % family-wise over the 23 features (Bonferroni): with inputs drawn from the training
# distribution, a round flags any feature at all with probability <= 1 %. A window smaller
# than MIN_TEST_ROWS is not tested (its counts are mostly sampling noise for the rare levels).
FAMILY_ALPHA = 0.01
DRIFT_TEST_ALPHA = FAMILY_ALPHA / len(FEATURES)
MIN_TEST_ROWS = 200
# Pearson's approximation wants an expected count of about 5 in every bin: rarer bins are
# pooled.
MIN_EXPECTED = 5.0


def chi_squared_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X chi-squared with `dof` degrees of freedom, in closed form for
    whole dof (no SciPy in the gateway): for even dof the Poisson sum, for odd dof erfc plus
    the half-integer series."""
    if statistic <= 0:
        return 1.0
    if math.isinf(statistic):  # exp(-inf) * inf would be NaN in the series below
        return 0.0
    half = statistic / 2
    if dof % 2 == 0:
        term = total = math.exp(-half)
        for i in range(1, dof // 2):
            term *= half / i
            total += term
        return min(1.0, total)
    total = math.erfc(math.sqrt(half))
    term = math.exp(-half) * math.sqrt(half) / math.gamma(1.5)
    for i in range(1, (dof - 1) // 2 + 1):
        total += term
        term *= half / (i + 0.5)
    return min(1.0, total)


def chi_squared_test(reference: Sequence[int], recent: Sequence[int]) -> float:
    """The p-value of `recent`'s counts against the reference's proportions (smoothed as
    PSI's, so a level training never saw has a small expected share, not zero)."""
    n = sum(recent)
    if n == 0:
        return 1.0
    ref_total = sum(reference) + SMOOTHING * len(reference)
    expected = [n * (ref + SMOOTHING) / ref_total for ref in reference]
    observed = list(recent)
    # Pool every bin expected under MIN_EXPECTED into one; a pool still under it joins the
    # smallest of the others.
    keep = [i for i, e in enumerate(expected) if e >= MIN_EXPECTED]
    pooled = [i for i, e in enumerate(expected) if e < MIN_EXPECTED]
    cells = [(expected[i], observed[i]) for i in keep]
    if pooled:
        pool = (sum(expected[i] for i in pooled), sum(observed[i] for i in pooled))
        if pool[0] < MIN_EXPECTED and cells:
            smallest = min(range(len(cells)), key=lambda c: cells[c][0])
            e, o = cells[smallest]
            cells[smallest] = (e + pool[0], o + pool[1])
        else:
            cells.append(pool)
    if len(cells) < 2:
        return 1.0
    statistic = sum((o - e) ** 2 / e for e, o in cells)
    return chi_squared_sf(statistic, len(cells) - 1)


def pvalues_by_feature(
    reference: dict[str, list[int]], rows: Iterable[Sequence[int]]
) -> dict[str, float]:
    recent = bin_counts(rows)
    return {f.name: chi_squared_test(reference[f.name], recent[f.name]) for f in FEATURES}


def profile_digest(row: Sequence[int]) -> str:
    """A training profile's fingerprint (blake2b, 64 bits): training logs these, the gateway
    compares each row's against them; neither logs nor exports a row."""
    import hashlib

    data = ",".join(str(int(value)) for value in row).encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def value_ranges(rows: Iterable[Sequence[int]]) -> dict[str, list[int]]:
    """Per feature, the lowest and highest value in `rows` (the training rows)."""
    ranges: dict[str, list[int]] = {}
    for row in rows:
        for feature, value in zip(FEATURES, row, strict=True):
            low_high = ranges.setdefault(feature.name, [int(value), int(value)])
            low_high[0] = min(low_high[0], int(value))
            low_high[1] = max(low_high[1], int(value))
    return ranges
