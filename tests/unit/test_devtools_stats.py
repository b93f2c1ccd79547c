"""The benchmark's statistics: percentiles, Poisson schedules, spreads, within-round ratios."""

from __future__ import annotations

import random

import numpy as np
import pytest

from devtools.stats import (
    Target,
    evaluate_target,
    latency_summary,
    per_round_ratios,
    percentile,
    poisson_schedule,
    spread,
)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 1) for _ in range(537)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([40, 10, 30, 20], 100) == 40  # unsorted input
    assert percentile([5.0], 99) == 5.0


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_refuses_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1, 2], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary_is_in_milliseconds() -> None:
    summary = latency_summary([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == pytest.approx(100)
    assert summary["mean_ms"] == pytest.approx(50.5)
    assert latency_summary([]) == {}


def test_poisson_schedule_is_seeded_sorted_and_within_the_duration() -> None:
    a = poisson_schedule(50, 60, seed=3)
    assert a == poisson_schedule(50, 60, seed=3)
    assert a != poisson_schedule(50, 60, seed=4)
    assert a == sorted(a)
    assert a[0] > 0 and a[-1] < 60
    # 3000 expected arrivals: the count lands within a few standard deviations (√3000 ≈ 55)
    assert abs(len(a) - 3000) < 250
    gaps = np.diff(a)
    assert float(np.mean(gaps)) == pytest.approx(1 / 50, rel=0.1)
    # exponential gaps: the standard deviation equals the mean (a uniform schedule would be 0)
    assert float(np.std(gaps)) == pytest.approx(1 / 50, rel=0.15)


def test_poisson_schedule_of_zero_rate_is_empty() -> None:
    assert poisson_schedule(0, 10, seed=1) == []
    assert poisson_schedule(10, 0, seed=1) == []


def test_spread_skips_missing_rounds() -> None:
    s = spread([3.0, None, 1.0, 2.0, float("nan"), 10.0])
    assert s is not None
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    assert spread([None, None]) is None


def test_ratios_are_taken_within_each_round_not_between_medians() -> None:
    rounds = [
        {"a": 10.0, "b": 5.0},
        {"a": 20.0, "b": 40.0},
        {"a": 30.0, "b": 15.0},
    ]
    ratios = per_round_ratios(rounds, "a", "b")
    assert ratios == [2.0, 0.5, 2.0]
    within = spread(ratios)
    assert within is not None and within.median == 2.0
    # the ratio of the medians (20 / 15) would tell a different story
    assert within.median != pytest.approx(20 / 15)


def test_ratio_is_missing_when_a_round_lacks_a_figure_or_divides_by_zero() -> None:
    rounds: list[dict[str, float | None]] = [
        {"a": 1.0},
        {"a": 1.0, "b": 0.0},
        {"a": None, "b": 2.0},
        {"a": 3.0, "b": 2.0},
    ]
    assert per_round_ratios(rounds, "a", "b") == [None, None, None, 1.5]


AT_LEAST = Target("sat", "sat (2) ≥ 4× (1)", "two", "one", "rps", 4.0, at_least=True)
AT_MOST = Target("p99", "p99 (2) ≤ 0.7× (1)", "two", "one", "p99", 0.7, at_least=False)
PLUS = Target("lone", "(2) ≤ (1) + 2 ms", "two", "one", "ms", 2.0, at_least=False, difference=True)


def rounds_of(
    figure: str, pairs: list[tuple[float, float]]
) -> list[dict[str, dict[str, float | None]]]:
    return [{"two": {figure: two}, "one": {figure: one}} for two, one in pairs]


def test_at_least_target_is_met_on_the_median_of_round_ratios() -> None:
    met = evaluate_target(AT_LEAST, rounds_of("rps", [(400, 90), (380, 100), (300, 100)]))
    assert met["per_round"] == pytest.approx([400 / 90, 3.8, 3.0])
    assert met["value"]["median"] == pytest.approx(3.8)
    assert met["met"] is False
    assert evaluate_target(AT_LEAST, rounds_of("rps", [(400, 90), (420, 100)]))["met"] is True


def test_at_most_target() -> None:
    assert evaluate_target(AT_MOST, rounds_of("p99", [(14, 23), (15, 22)]))["met"] is True
    assert evaluate_target(AT_MOST, rounds_of("p99", [(20, 23), (19, 22)]))["met"] is False


def test_difference_target_subtracts() -> None:
    result = evaluate_target(PLUS, rounds_of("ms", [(10.5, 9.0), (12.0, 9.0), (10.0, 9.5)]))
    assert result["per_round"] == pytest.approx([1.5, 3.0, 0.5])
    assert result["value"]["median"] == pytest.approx(1.5)
    assert result["met"] is True


def test_target_without_figures_is_neither_met_nor_failed() -> None:
    result = evaluate_target(AT_LEAST, [{"two": {}, "one": {"rps": 90.0}}])
    assert result["met"] is None and result["value"] is None
