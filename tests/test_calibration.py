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

from krpo_bench import sequential, stats

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


def seeded_pairs(
    rng: np.random.Generator, draws: int, n: int, shift: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
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


def test_tost_holds_its_level_at_the_margin() -> None:
    """A true difference equal to the equivalence margin (either sign) is declared equivalent at
    most alpha of the time (the TOST is conservative when the spread is large against the margin)."""
    n, sd, margin = 6, 0.015, 0.02
    rng = np.random.default_rng(20)
    rates = []
    for truth in (margin, -margin):
        x, y = seeded_pairs(rng, DRAWS, n, truth, sd / math.sqrt(2))
        p = np.array([stats.tost(a, b, margin, paired=True).p_value for a, b in zip(x, y)])
        rates.append(float(np.mean(p < ALPHA)))
        assert np.mean(p < ALPHA) <= scipy.stats.binom.ppf(0.999, DRAWS, ALPHA) / DRAWS
    print(f"\nTOST level at the margin (6 pairs, nominal 5 %): {rates[0]:.3f} at +margin, {rates[1]:.3f} at -margin")


def holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm's adjustment of each row: sorted p times (m, m - 1, ..., 1), running maximum, capped at 1."""
    order = np.argsort(p, axis=1)
    scaled = np.take_along_axis(p, order, axis=1) * np.arange(p.shape[1], 0, -1)
    steps = np.minimum(1.0, np.maximum.accumulate(scaled, axis=1))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, steps, axis=1)
    return adjusted


def test_holm_controls_the_family_wise_error_under_the_global_null() -> None:
    """Ten variants against one reference on the same seeds (correlated tests), no true difference:
    the share of studies with any Holm-adjusted p below alpha stays at most alpha."""
    n, variants = 6, 10
    rng = np.random.default_rng(21)
    seed_effect = rng.normal(0.5, 0.05, (DRAWS, 1, n))
    scores = seed_effect + rng.normal(0.0, 0.02, (DRAWS, variants + 1, n))
    p = scipy.stats.ttest_rel(scores[:, 1:, :], scores[:, :1, :], axis=2).pvalue
    adjusted = holm_rows(p)
    for row in range(5):  # statsmodels' Holm runs a full garbage collection per call: checked on a few draws
        assert stats.holm(p[row]) == pytest.approx(adjusted[row])
    holm_any = np.any(adjusted < ALPHA, axis=1)
    raw_any = np.any(p < ALPHA, axis=1)
    print(f"\nfamily-wise error, 10 comparisons: raw {raw_any.mean():.3f}, Holm {holm_any.mean():.3f} (nominal 0.05)")
    assert np.mean(holm_any) <= scipy.stats.binom.ppf(0.999, DRAWS, ALPHA) / DRAWS
    assert raw_any.mean() > 0.25


def crossed_outcomes(
    rng: np.random.Generator, n_seeds: int, n_items: int, effect: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two variants on the same seeds and the same freshly drawn test items: item difficulty shared,
    an item-specific advantage (items the variant helps or hurts), per-seed skill, Bernoulli
    outcomes. Every component is bounded, so no probability is clipped and the expected difference
    over seeds and items is exactly `effect`."""
    difficulty = rng.uniform(0.35, 0.6, n_items)
    advantage = rng.uniform(-0.3, 0.3, n_items)
    skill_x, skill_y = rng.uniform(-0.04, 0.04, (2, n_seeds, 1))
    p_x = difficulty + effect + advantage + skill_x
    p_y = difficulty + skill_y
    return (rng.random(p_x.shape) < p_x).astype(float), (rng.random(p_y.shape) < p_y).astype(float)


@pytest.mark.parametrize("n_seeds", [5, 20])
def test_two_level_interval_covers_when_seeds_and_items_both_vary(n_seeds: int) -> None:
    """The estimand is the expected difference over seeds and test items; the interval holds its
    level, while the seed-only t-interval, conditional on the items drawn, falls short once the
    seeds are many enough for the items' noise to matter."""
    draws, n_items, effect = 1000, 200, 0.02
    rng = np.random.default_rng(22 + n_seeds)
    two_level, seed_only, item_share = [], [], []
    for _ in range(draws):
        x, y = crossed_outcomes(rng, n_seeds, n_items, effect)
        result = stats.two_level_interval(x, y, paired=True)
        seeds = stats.mean_ci(x.mean(axis=1) - y.mean(axis=1))
        two_level.append(result.difference.low <= effect <= result.difference.high)
        seed_only.append(seeds.low <= effect <= seeds.high)
        item_share.append(result.item_share)
    print(
        f"\ncoverage of nominal 95 % intervals, {n_seeds} seeds x {n_items} items: two-level "
        f"{np.mean(two_level):.3f}, seeds only {np.mean(seed_only):.3f}; items' share of the variance "
        f"{np.mean(item_share):.2f}"
    )
    assert_rate(np.array(two_level), 0.95)
    if n_seeds == 20:
        assert np.mean(seed_only) < scipy.stats.binom.ppf(0.001, draws, 0.95) / draws


def _sequential_run(
    differences: np.ndarray, looks: tuple[int, ...], margin: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each simulated comparison run through the looks: whether it stopped for a difference, for
    equivalence, and at how many seeds. Per-look p-values are vectorised (the paired t-test and the
    TOST's larger one-sided p, as stats.tost computes them)."""
    p_difference, p_tost = [], []
    for n in looks:
        d = differences[:, :n]
        mean, se = d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)
        p_difference.append(scipy.stats.ttest_1samp(d, 0.0, axis=1).pvalue)
        lower, upper = scipy.stats.t.sf((mean + margin) / se, n - 1), scipy.stats.t.cdf((mean - margin) / se, n - 1)
        p_tost.append(np.maximum(lower, upper))
    levels = sequential.nominal_levels(sequential.information_fractions(looks), ALPHA)
    different, equivalent, seeds = [], [], []
    for row in range(differences.shape[0]):
        for k, n in enumerate(looks):
            outcome = sequential.look_decision(k + 1, looks, p_difference[k][row], p_tost[k][row], ALPHA)
            if outcome != "continue":
                break
        different.append(outcome == "decided" and p_difference[k][row] <= levels[k])
        equivalent.append(outcome == "decided" and not different[-1])
        seeds.append(n)
    return np.array(different), np.array(equivalent), np.array(seeds)


def test_sequential_design_error_power_and_expected_seeds() -> None:
    """Seeds 5, step 5, max 20 (looks at 5, 10, 15, 20), margin = target effect = 2 points, the sd of
    the differences set so the fixed 20-seed design has 80 % power at the target. Under no difference
    the difference test errs at most alpha over the looks; at the margin the TOST errs at most alpha;
    at the target effect the design keeps most of the fixed design's power with fewer seeds on average."""
    looks, target = sequential.planned_looks(5, 5, 20), stats.TARGET_EFFECT
    sd = target * math.sqrt(20) / stats.minimum_detectable_effect(1.0, 19)
    rng = np.random.default_rng(23)
    different, equivalent_null, seeds_null = _sequential_run(rng.normal(0.0, sd, (POWER_DRAWS, 20)), looks, target)
    assert np.mean(different) <= scipy.stats.binom.ppf(0.999, POWER_DRAWS, ALPHA) / POWER_DRAWS
    _, equivalent_margin, _ = _sequential_run(rng.normal(target, sd, (POWER_DRAWS, 20)), looks, target)
    assert np.mean(equivalent_margin) <= scipy.stats.binom.ppf(0.999, POWER_DRAWS, ALPHA) / POWER_DRAWS
    found, _, seeds_target = _sequential_run(rng.normal(target, sd, (POWER_DRAWS, 20)), looks, target)
    power = float(np.mean(found))
    fixed = next(n for n in range(2, 100) if stats.t_power(target, sd / math.sqrt(n), n - 1) >= power)
    print(
        f"\nsequential design (looks {looks}, sd of differences {sd * 100:.2f} points): type-I error "
        f"{np.mean(different):.3f}, TOST error at the margin {np.mean(equivalent_margin):.3f}, power at "
        f"{target * 100:g} points {power:.3f}; expected seeds {seeds_target.mean():.1f} at the target and "
        f"{seeds_null.mean():.1f} (equivalent {np.mean(equivalent_null):.2f}) at no difference, against "
        f"{fixed} for the fixed design with the same power"
    )
    assert power >= 0.75
    assert seeds_target.mean() < fixed
