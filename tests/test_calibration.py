"""The statistics are calibrated: simulated studies with a known truth.

Under the null the tests reject at their nominal (or, for exact rank tests, their attainable) level;
against a true shift equal to the stated minimum detectable effect they reject with about 80 %
probability. Each rate is checked against a 99.9 % binomial acceptance interval, with fixed seeds.
Level checks call the module's own 1-D functions on every draw; power checks vectorise the test
over the draws with scipy (the functions equal scipy's tests, see test_stats.py).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from krpo_bench import stats

ALPHA = 0.05
DRAWS = 2000
POWER_DRAWS = 4000


def assert_rate(rejections: np.ndarray, expected: float, slack: float = 0.0) -> None:
    """The rejection rate lies in the 99.9 % binomial interval around `expected` (widened by `slack`)."""
    low, high = scipy.stats.binom.interval(0.999, rejections.size, expected)
    rate = float(np.mean(rejections))
    assert low / rejections.size - slack <= rate <= high / rejections.size + slack, (rate, expected)


def signed_rank_size(n: int) -> float:
    """P(exact two-sided signed-rank p <= ALPHA) under the null, by enumerating all 2^n sign patterns."""
    signs = np.array(list(itertools.product([0, 1], repeat=n)))
    w = signs @ np.arange(1, n + 1)
    centre = n * (n + 1) / 4
    extremeness = np.abs(w - centre)
    p = (extremeness[None, :] >= extremeness[:, None] - 1e-9).mean(axis=1)
    return float(np.mean(p <= ALPHA))


def rank_sum_size(n_x: int, n_y: int) -> float:
    """P(exact two-sided rank-sum p <= ALPHA) under the null, by enumerating every split of the ranks."""
    ranks = np.arange(1, n_x + n_y + 1)
    sums = np.array([ranks[list(chosen)].sum() for chosen in itertools.combinations(range(n_x + n_y), n_x)])
    centre = n_x * (n_x + n_y + 1) / 2
    extremeness = np.abs(sums - centre)
    p = (extremeness[None, :] >= extremeness[:, None] - 1e-9).mean(axis=1)
    return float(np.mean(p <= ALPHA))


def seeded_pairs(rng: np.random.Generator, draws: int, n: int, shift: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two variants on the same seeds: a large per-seed effect both share, plus independent noise."""
    seed_effect = rng.normal(0.5, 0.05, (draws, n))
    return seed_effect + shift + rng.normal(0, noise, (draws, n)), seed_effect + rng.normal(0, noise, (draws, n))


def test_paired_tests_hold_their_level_under_the_null() -> None:
    n = 6
    x, y = seeded_pairs(np.random.default_rng(1), DRAWS, n, 0.0, 0.02)
    d = [stats.paired_differences(a, b) for a, b in zip(x, y)]
    t_p = np.array([stats.paired_p_value(di) for di in d])
    rank_p = np.array([stats.signed_rank_p_value(di) for di in d])
    covers = np.array([stats.mean_ci(di).low <= 0 <= stats.mean_ci(di).high for di in d[:500]])
    assert_rate(t_p < ALPHA, ALPHA)
    assert_rate(rank_p <= ALPHA, signed_rank_size(n))
    assert signed_rank_size(n) == pytest.approx(2 / 64)  # only the two all-same-sign patterns reach p <= 0.05
    assert np.array_equal(~covers, t_p[:500] < ALPHA)  # the interval excludes zero exactly when the test rejects


def test_paired_tests_on_accuracy_scores_with_ties_stay_below_their_level() -> None:
    """Held-out accuracies are multiples of 1/200: ties and zero differences are common. With ties
    the signed-rank p-value comes from scipy's exhaustive permutations (10-30 ms a call), hence
    fewer draws."""
    n, draws = 6, 500
    x, y = seeded_pairs(np.random.default_rng(2), draws, n, 0.0, 0.02)
    x, y = np.round(x * 200) / 200, np.round(y * 200) / 200
    d = [stats.paired_differences(a, b) for a, b in zip(x, y)]
    t_p = np.array([stats.paired_p_value(di) for di in d])
    rank_p = np.array([stats.signed_rank_p_value(di) for di in d])
    assert np.mean([np.unique(np.abs(di)).size < n for di in d]) > 0.5, "the draws should have ties"
    assert_rate(t_p < ALPHA, ALPHA)
    assert np.mean(rank_p <= ALPHA) <= scipy.stats.binom.ppf(0.999, draws, ALPHA) / draws


def test_unpaired_tests_hold_their_level_under_the_null() -> None:
    rng = np.random.default_rng(3)
    n_x, n_y = 5, 7
    x, y = rng.normal(0.5, 0.02, (DRAWS, n_x)), rng.normal(0.5, 0.04, (DRAWS, n_y))
    welch = np.array([stats.welch_p_value(a, b) for a, b in zip(x, y)])
    rank = np.array([stats.rank_sum_p_value(a, b) for a, b in zip(x, y)])
    assert_rate(welch < ALPHA, ALPHA)
    assert_rate(rank <= ALPHA, rank_sum_size(n_x, n_y))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_paired_power_at_the_stated_mde_is_80_percent(n: int) -> None:
    """The MDE stated for an observed set of differences is the shift found 80 % of the time at that spread."""
    rng = np.random.default_rng(10 + n)
    observed = rng.normal(0.0, 0.015, n)
    mde = stats.paired_mde(observed)
    sd = float(np.std(observed, ddof=1))
    assert mde == pytest.approx(stats.minimum_detectable_effect(sd / math.sqrt(n), n - 1))
    for shift in (mde, -mde):
        d = shift + rng.normal(0.0, sd, (POWER_DRAWS, n))
        assert_rate(scipy.stats.ttest_1samp(d, 0.0, axis=1).pvalue < ALPHA, stats.POWER)


def test_paired_power_with_a_shared_seed_effect() -> None:
    """Seed-level variation cancels in the differences: only the noise sd sets the paired MDE, and
    the unpaired analysis of the same data sees far less of that shift."""
    n, noise = 5, 0.02
    mde = stats.minimum_detectable_effect(noise * math.sqrt(2) / math.sqrt(n), n - 1)
    x, y = seeded_pairs(np.random.default_rng(4), POWER_DRAWS, n, mde, noise)
    assert_rate(scipy.stats.ttest_rel(x, y, axis=1).pvalue < ALPHA, stats.POWER)
    assert np.mean(scipy.stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < ALPHA) < 0.3


def test_welch_power_at_the_stated_mde_is_about_80_percent() -> None:
    """Welch's power through the noncentral t at the Welch-Satterthwaite df is an approximation: it
    ignores that the df is itself estimated. Within 2 points of 80 % from 6 seeds a variant."""
    rng = np.random.default_rng(5)
    n_x, n_y, sd_x, sd_y = 6, 6, 0.02, 0.03
    observed_x, observed_y = rng.normal(0, sd_x, n_x), rng.normal(0, sd_y, n_y)
    mde = stats.welch_mde(observed_x, observed_y)
    sx, sy = np.std(observed_x, ddof=1), np.std(observed_y, ddof=1)
    x, y = rng.normal(mde, sx, (POWER_DRAWS, n_x)), rng.normal(0, sy, (POWER_DRAWS, n_y))
    assert_rate(scipy.stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < ALPHA, stats.POWER, slack=0.02)


def test_seeds_needed_reach_80_percent_power_and_one_fewer_does_not() -> None:
    rng = np.random.default_rng(6)
    observed = rng.normal(0.0, 0.02, 5)
    sd = float(np.std(observed, ddof=1))
    needed = stats.paired_seeds_needed(observed, 0.02)
    assert needed is not None and needed > 5
    for n in (needed - 1, needed):
        power = stats.t_power(0.02, sd / math.sqrt(n), n - 1)
        assert (power >= stats.POWER) == (n == needed)
        d = 0.02 + rng.normal(0.0, sd, (POWER_DRAWS, n))
        assert_rate(scipy.stats.ttest_1samp(d, 0.0, axis=1).pvalue < ALPHA, power)
