"""The drift test of issue 24: the closed-form chi-squared tail against SciPy, p-values that are
uniform without drift and ~0 with it, pooled rare bins, profile digests and training ranges,
and the window's p-values, stuck features and gauges."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from scipy import stats

from api import versions
from api.feedback_store import AnsweredIds
from api.monitoring import MIN_STUCK_ROWS, DriftWindow, ModelMonitor
from api.prediction_ids import PredictionIds
from contract.dataset import read_rows
from contract.drift import (
    DRIFT_TEST_ALPHA,
    MIN_TEST_ROWS,
    SMOOTHING,
    bin_counts,
    chi_squared_sf,
    chi_squared_test,
    profile_digest,
    pvalues_by_feature,
    value_ranges,
)
from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES, FEATURES
from telemetry import build_telemetry
from tests.support.metric_reader import point_values

DATASET = [list(r.features) for r in read_rows()]
SHIFTED = {"age", "smoking", "passive_smoker"}


@pytest.fixture(autouse=True)
def fresh_version_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    # version_label admits the first 8 versions a process sees: other tests' must not count.
    monkeypatch.setattr(versions, "_seen", {})


def training_split() -> tuple[dict[str, list[int]], list[list[int]]]:
    """The reference of 700 dataset rows and the 300 others (as test_monitoring's PSI test)."""
    rows = [list(r) for r in DATASET]
    random.Random(3).shuffle(rows)
    return bin_counts(rows[:700]), rows[700:]


def shift(rows: Sequence[Sequence[int]]) -> list[list[int]]:
    """Older, and everyone a heavy smoker and passive smoker: the other 20 features as they were."""
    return [[min(r[0] + 25, 120), *r[1:10], 8, 8, *r[12:]] for r in rows]


# --- chi_squared_sf --------------------------------------------------------------------------
STATISTICS = (0.0, 1e-12, 1e-6, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 4.5, 7.0, 10.0, 15.0, 22.5,
              30.0, 45.0, 60.0, 100.0, 250.0, 700.0, 1500.0, 1e4, 1e6, 1e300)  # fmt: skip


@pytest.mark.parametrize("dof", range(1, 31))
def test_chi_squared_tail_equals_scipy(dof: int) -> None:
    for statistic in STATISTICS:
        expected = float(stats.chi2.sf(statistic, dof))
        got = chi_squared_sf(statistic, dof)
        # Relative, except far in the tail: past a statistic of ~1417, exp(-statistic / 2)
        # underflows before the series multiplies it back up (dof 30 at 1500: 0, SciPy
        # 4e-297), a p-value that is zero for any alpha.
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-290), (dof, statistic)
        assert 0.0 <= got <= 1.0


def test_chi_squared_tail_is_one_at_zero_and_below() -> None:
    assert [chi_squared_sf(s, d) for s in (0.0, -3.0) for d in (1, 2, 7)] == [1.0] * 6


def test_an_infinite_statistic_has_tail_zero() -> None:
    assert [chi_squared_sf(math.inf, d) for d in (1, 2, 3, 4, 9)] == [0.0] * 5


# --- chi_squared_test ------------------------------------------------------------------------
def smoothed_shares(reference: Sequence[int]) -> list[float]:
    total = sum(reference) + SMOOTHING * len(reference)
    return [(r + SMOOTHING) / total for r in reference]


def draw(shares: Sequence[float], n: int, rng: random.Random) -> list[int]:
    counts = [0] * len(shares)
    for index in rng.choices(range(len(shares)), weights=shares, k=n):
        counts[index] += 1
    return counts


def binomial_bound(trials: int, p: float) -> tuple[float, float]:
    """Four standard deviations either side of the binomial mean."""
    spread = 4 * math.sqrt(trials * p * (1 - p))
    return trials * p - spread, trials * p + spread


@pytest.mark.parametrize("feature", ["age", "smoking", "chest_pain"])
def test_pvalues_are_uniform_for_samples_of_the_reference_itself(feature: str) -> None:
    # The dataset's counts: age in decades (its 70+ bin has 10 rows), chest_pain with a level
    # of 10 rows and two of under 40, so rare bins are in play.
    reference = bin_counts(DATASET)[feature]
    shares = smoothed_shares(reference)
    rng = random.Random(24)
    pvalues = [chi_squared_test(reference, draw(shares, 1000, rng)) for _ in range(400)]
    for level in (0.05, 0.25, 0.5):
        low, high = binomial_bound(400, level)
        assert low <= sum(p < level for p in pvalues) <= high, (level, sorted(pvalues)[:10])
    assert all(0.0 <= p <= 1.0 for p in pvalues)


def test_a_shifted_sample_has_a_pvalue_of_about_zero() -> None:
    reference = bin_counts(DATASET)["smoking"]
    rng = random.Random(5)
    # A tenth of the rows moved from level 1 to level 8.
    shares = smoothed_shares(reference)
    shares[7] += 0.1
    shares[0] -= 0.1
    for _ in range(20):
        assert chi_squared_test(reference, draw(shares, 1000, rng)) < 1e-12


def test_rare_bins_are_pooled_and_the_pool_joins_the_smallest_bin_when_still_rare() -> None:
    # Ten levels of which training saw two: the eight others expect 100 * 0.5 / 905 each,
    # 0.44 together, so they join the smaller of the two seen levels; one degree of freedom.
    reference = [600, 300, 0, 0, 0, 0, 0, 0, 0, 0]
    total = 900 + 0.5 * 10
    big, small, pool = 100 * 600.5 / total, 100 * 300.5 / total, 8 * 100 * 0.5 / total
    recent = [60, 30, 4, 0, 0, 3, 0, 0, 3, 0]
    expected = stats.chisquare([60, 40], f_exp=[big, small + pool]).pvalue
    assert chi_squared_test(reference, recent) == pytest.approx(expected, rel=1e-9)


def test_a_pool_of_enough_expected_rows_is_a_bin_of_its_own() -> None:
    # Twenty unseen levels expect 1000 * 0.5 / 1010 each, 9.9 together (>= 5): three cells.
    reference = [500, 500] + [0] * 20
    total = 1000 + 0.5 * 22
    seen, pool = 1000 * 500.5 / total, 20 * 1000 * 0.5 / total
    recent = [480, 490] + [1] * 20
    recent[2] += 10  # 30 rows in levels training never saw
    expected = stats.chisquare([480, 490, 30], f_exp=[seen, seen, pool]).pvalue
    assert chi_squared_test(reference, recent) == pytest.approx(expected, rel=1e-9)
    assert expected < 1e-6  # and the test sees them


def test_one_cell_left_or_no_rows_means_nothing_to_test() -> None:
    # 10 rows against one seen level: the unseen levels expect 0.005 each and are pooled into
    # it, leaving a single cell (no degree of freedom), whatever the rows say.
    assert chi_squared_test([1000, 0, 0], [0, 10, 0]) == 1.0
    assert chi_squared_test([0, 0, 0], [1, 1, 1]) == 1.0
    assert chi_squared_test([5, 5], [0, 0]) == 1.0
    assert chi_squared_test([7], [40]) == 1.0


# --- pvalues_by_feature on the dataset -------------------------------------------------------
def test_held_out_training_like_rows_flag_no_feature() -> None:
    reference, held_out = training_split()
    pvalues = pvalues_by_feature(reference, held_out)
    assert set(pvalues) == set(FEATURE_NAMES)
    assert {name for name, p in pvalues.items() if p < DRIFT_TEST_ALPHA} == set(), pvalues


def test_rows_shifted_on_three_features_flag_exactly_those() -> None:
    reference, held_out = training_split()
    pvalues = pvalues_by_feature(reference, shift(held_out))
    assert {name for name, p in pvalues.items() if p < DRIFT_TEST_ALPHA} == SHIFTED, pvalues
    assert all(pvalues[name] < 1e-12 for name in SHIFTED)


# --- profile digests and ranges --------------------------------------------------------------
def test_the_profile_digest_is_stable_and_tells_one_changed_feature() -> None:
    # Pinned: training wrote these into reference_distribution.json; a changed digest would
    # make every row of every served version an unseen profile.
    assert profile_digest(EXAMPLE_FEATURES) == "172603b4fe0efba5"
    assert profile_digest(list(EXAMPLE_FEATURES)) == "172603b4fe0efba5"
    assert len(profile_digest(EXAMPLE_FEATURES)) == 16
    digests = {profile_digest(EXAMPLE_FEATURES)}
    for index, feature in enumerate(FEATURES):
        row = list(EXAMPLE_FEATURES)
        row[index] = feature.maximum if row[index] != feature.maximum else feature.minimum
        digests.add(profile_digest(row))
    assert len(digests) == 1 + len(FEATURES)
    # The separator keeps values apart: (12, 3) is not (1, 23).
    assert profile_digest([12, 3]) != profile_digest([1, 23])


def test_the_dataset_has_152_distinct_profiles() -> None:
    assert len({profile_digest(r) for r in DATASET}) == len({tuple(r) for r in DATASET}) == 152


def test_value_ranges_are_each_features_lowest_and_highest_value() -> None:
    rows = [[30, 1] + [3] * 21, [25, 2] + [4] * 21, [71, 1] + [2] * 20 + [7]]
    ranges = value_ranges(rows)
    assert list(ranges) == list(FEATURE_NAMES)
    assert ranges["age"] == [25, 71] and ranges["gender"] == [1, 2]
    assert ranges["air_pollution"] == [2, 4] and ranges["snoring"] == [3, 7]
    assert value_ranges([]) == {}
    dataset = value_ranges(DATASET)
    assert dataset["age"] == [14, 73]
    for index, feature in enumerate(FEATURES):
        column = [r[index] for r in DATASET]
        assert dataset[feature.name] == [min(column), max(column)]


# --- the window -----------------------------------------------------------------------------
def test_a_feature_constant_over_enough_rows_is_stuck_and_not_over_fewer() -> None:
    _, held_out = training_split()
    stuck = [[*r[:10], 5, *r[11:]] for r in held_out]  # smoking always 5
    window = DriftWindow(size=300)
    window.compute(stuck[:MIN_STUCK_ROWS])
    assert window.stuck == {"smoking"}
    window.compute(stuck[: MIN_STUCK_ROWS - 1])
    assert window.stuck == set()
    window.compute(held_out)
    assert window.stuck == set()  # every feature of real rows varies
    window.compute([held_out[0]] * MIN_STUCK_ROWS)
    assert window.stuck == set(FEATURE_NAMES)


def test_pvalues_are_per_served_version_and_forgotten_with_it() -> None:
    reference, held_out = training_split()
    window = DriftWindow(size=300)
    window.references["1"] = reference
    window.references["2"] = bin_counts(shift(held_out))  # trained on the shifted population
    window.add(shift(held_out))
    window.compute()
    assert window.tested_rows == 300
    flagged = {
        version: {name for name, p in pvalues.items() if p < DRIFT_TEST_ALPHA}
        for version, pvalues in window.pvalues.items()
    }
    assert flagged == {"1": SHIFTED, "2": set()}
    window.keep(["2"])
    assert set(window.pvalues) == set(window.scores) == {"2"}


# --- the gauges -----------------------------------------------------------------------------
gauges = point_values


@pytest.fixture
def monitor() -> Iterator[tuple[ModelMonitor, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    telemetry = build_telemetry("unit", metric_readers=[reader], prometheus=False)
    yield (
        ModelMonitor(telemetry, ids=PredictionIds(b"k" * 32), answered=AnsweredIds(telemetry)),
        reader,
    )
    telemetry.shutdown()


def drifted(reader: InMemoryMetricReader) -> dict[str, float]:
    values = gauges(reader, "model_feature_drifted")
    assert all(dict(key)["model_version"] == "1" for key in values)
    return {dict(key)["feature"]: value for key, value in values.items()}


def test_drifted_gauge_names_the_shifted_features_with_enough_rows(
    monitor: tuple[ModelMonitor, InMemoryMetricReader],
) -> None:
    model, reader = monitor
    reference, held_out = training_split()
    model.drift.references["1"] = reference
    model.drift.compute(shift(held_out)[:MIN_TEST_ROWS])
    assert drifted(reader) == {name: int(name in SHIFTED) for name in FEATURE_NAMES}
    pvalues = gauges(reader, "model_feature_drift_pvalue")
    assert len(pvalues) == len(FEATURE_NAMES)
    assert pvalues[(("feature", "age"), ("model_version", "1"))] == model.drift.pvalues["1"]["age"]

    # One row fewer: p-values still exported, nothing called drifted.
    model.drift.compute(shift(held_out)[: MIN_TEST_ROWS - 1])
    assert min(model.drift.pvalues["1"].values()) < DRIFT_TEST_ALPHA
    assert drifted(reader) == {name: 0 for name in FEATURE_NAMES}
    assert len(gauges(reader, "model_feature_drift_pvalue")) == len(FEATURE_NAMES)


def test_stuck_gauge_with_enough_rows_only(
    monitor: tuple[ModelMonitor, InMemoryMetricReader],
) -> None:
    model, reader = monitor
    _, held_out = training_split()
    stuck = [[*r[:3], 1, *r[4:]] for r in held_out]  # alcohol_use always 1
    model.drift.compute(stuck[: MIN_STUCK_ROWS - 1])
    assert gauges(reader, "model_input_stuck_features") == {}
    model.drift.compute(stuck[:MIN_STUCK_ROWS])
    assert gauges(reader, "model_input_stuck_features") == {
        (("feature", name),): int(name == "alcohol_use") for name in FEATURE_NAMES
    }
