"""krpo_bench.stats against scipy / rliable / numpy / plain loops on fixed numbers."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from rliable import metrics as rly

from krpo_bench import stats
from krpo_bench.dashboards.curves import aggregate_curve

X = np.array([0.52, 0.47, 0.55, 0.50, 0.49, 0.61, 0.45, 0.53])
Y = np.array([0.44, 0.48, 0.41, 0.51, 0.43, 0.46, 0.40, 0.47])


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _bootstrap(samples, statistic, seed=stats.SEED):
    return scipy.stats.bootstrap(samples, statistic, n_resamples=stats.N_BOOTSTRAP, axis=-1, vectorized=True,
                                 method="percentile", rng=np.random.default_rng(seed)).confidence_interval


def test_mean_t_interval() -> None:
    ci = stats.mean_ci(X)
    low, high = scipy.stats.t.interval(0.95, len(X) - 1, loc=X.mean(), scale=X.std(ddof=1) / math.sqrt(len(X)))
    assert ci.estimate == pytest.approx(0.515)
    assert (ci.low, ci.high) == pytest.approx((low, high))
    assert (ci.low, ci.high) == pytest.approx((0.4731, 0.5569), abs=1e-4)


def test_mean_bootstrap_interval_is_seeded() -> None:
    ci = stats.mean_ci(X, method="bootstrap")
    expected = _bootstrap((X,), np.mean)
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high))
    assert ci == stats.mean_ci(X, method="bootstrap")
    assert ci != stats.mean_ci(X, method="bootstrap", seed=1)
    assert X.min() <= ci.low < ci.estimate < ci.high <= X.max()
    with pytest.raises(ValueError, match="unknown interval method"):
        stats.mean_ci(X, method="wald")


def test_iqm_matches_rliable() -> None:
    ci = stats.iqm_ci(X)
    assert ci.estimate == pytest.approx(rly.aggregate_iqm(X[:, None]))
    assert ci.estimate == pytest.approx(np.mean(np.sort(X)[2:6]))  # middle half of 8 values
    expected = _bootstrap((X,), lambda a, axis: scipy.stats.trim_mean(a, 0.25, axis=axis))
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high))
    assert ci.low <= ci.estimate <= ci.high


def test_probability_of_improvement_matches_rliable_and_pair_count() -> None:
    ci = stats.probability_of_improvement(X, Y)
    pairs = (X[:, None] > Y[None, :]).mean() + 0.5 * (X[:, None] == Y[None, :]).mean()
    assert ci.estimate == pytest.approx(pairs)
    assert ci.estimate == pytest.approx(rly.probability_of_improvement(X[:, None], Y[:, None]))
    assert ci.estimate == pytest.approx(55.5 / 64)
    assert 0.5 < ci.low <= ci.estimate <= ci.high <= 1.0
    assert stats.probability_of_improvement(X, X).estimate == 0.5


def test_difference_and_welch_match_scipy() -> None:
    ci = stats.mean_difference_ci(X, Y)
    result = scipy.stats.ttest_ind(X, Y, equal_var=False)
    expected = result.confidence_interval(0.95)
    assert ci.estimate == pytest.approx(X.mean() - Y.mean())
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high))
    assert stats.welch_p_value(X, Y) == pytest.approx(result.pvalue)
    assert stats.welch_p_value(X, Y) == pytest.approx(0.01138, abs=1e-5)


def test_verdict_win() -> None:
    c = stats.compare(X, Y, "krpo", "grpo")
    d = c.difference
    assert c.analysis == "unpaired" and c.difference == stats.mean_difference_ci(X, Y)
    assert c.sentence.startswith(
        f"krpo beats grpo by 6.5 points (unpaired, Welch, 8 seeds: +6.5 points, "
        f"95 % CI [{d.low * 100:+.1f}, {d.high * 100:+.1f}]); with 8 seeds this study can only detect differences above "
    )
    assert c.sentence == (
        "krpo beats grpo by 6.5 points (unpaired, Welch, 8 seeds: +6.5 points, 95 % CI [+1.7, +11.3]); "
        "with 8 seeds this study can only detect differences above 6.7 points; "
        "about 78 seeds per variant would detect 2 points"
    )


def test_verdict_loss() -> None:
    c = stats.compare(Y, X, "krpo", "grpo")
    assert c.sentence.startswith("krpo trails grpo by 6.5 points (unpaired, Welch, 8 seeds: -6.5 points, 95 % CI [-11.3, -1.7]);")


def test_verdict_no_difference() -> None:
    x, y = np.array([0.50, 0.47, 0.53, 0.49, 0.52]), np.array([0.49, 0.46, 0.50, 0.51, 0.48])
    c = stats.compare(x, y, "krpo", "grpo", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert c.difference.low < 0 < c.difference.high
    assert c.sentence == (
        "no detectable difference between krpo and grpo (paired by seed, 5 seeds: +1.4 points, 95 % CI [-1.5, +4.3]); "
        "with 5 seeds this study can only detect differences above 3.9 points; about 13 seeds would detect 2 points"
    )
    c = stats.compare(x[:4], y, "krpo", "grpo", [0, 1, 2, 3], [0, 1, 2, 3, 4])
    assert c.analysis == "unpaired" and "(unpaired, Welch, 4 and 5 seeds:" in c.sentence
    assert "about 21 seeds per variant would detect 2 points" in c.sentence
    assert "would detect 5 points" in stats.compare(x, y, "krpo", "grpo", target_effect=0.05).sentence


def test_single_seed_has_no_interval() -> None:
    c = stats.compare([0.52], Y, "krpo", "grpo")
    assert math.isnan(c.difference.low) and math.isnan(c.difference.high) and math.isnan(c.welch_p)
    assert math.isnan(c.mde) and c.seeds_needed is None
    assert c.difference.estimate == pytest.approx(0.52 - Y.mean())
    assert c.sentence == (
        "cannot tell whether krpo beats grpo: only one seed of krpo, so no confidence interval "
        "(difference +7.0 points)"
    )
    for ci in (stats.mean_ci([0.5]), stats.iqm_ci([0.5]), stats.mean_ci([0.5], method="bootstrap")):
        assert ci.estimate == 0.5 and math.isnan(ci.low) and math.isnan(ci.high)
    assert stats.compare([], Y, "krpo", "grpo").sentence == "cannot compare krpo with grpo: no finished seeds of krpo"
    pair = stats.compare([0.52], [0.50], "krpo", "grpo", [3], [3])
    assert pair.analysis == "paired" and math.isnan(pair.p_value) and math.isnan(pair.rank_p_value)
    assert pair.sentence.startswith("cannot tell whether krpo beats grpo: only one seed of krpo and grpo")


def test_zero_variance() -> None:
    same = stats.compare([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], "krpo", "grpo")
    assert (same.difference.low, same.difference.high) == pytest.approx((0.1, 0.1))
    assert same.welch_p == 0.0 and same.prob_improvement.estimate == 1.0
    assert same.sentence.startswith("krpo beats grpo by 10.0 points (unpaired, Welch, 3 seeds: +10.0 points")
    assert same.mde == 0 and same.seeds_needed == 2
    tie = stats.compare([0.5, 0.5], [0.5, 0.5], "krpo", "grpo")
    assert tie.welch_p == 1.0 and tie.prob_improvement.estimate == 0.5
    assert tie.sentence.startswith("no detectable difference")
    one_constant = stats.compare([0.5, 0.5, 0.5], [0.40, 0.45, 0.42], "krpo", "grpo")
    assert one_constant.difference.low < one_constant.difference.estimate < one_constant.difference.high
    assert stats.mean_ci([0.3, 0.3]) == stats.Interval(0.3, 0.3, 0.3)
    assert stats.iqm_ci([0.3, 0.3, 0.3]) == stats.Interval(0.3, 0.3, 0.3)


def test_nans_are_dropped() -> None:
    assert stats.mean_ci([0.4, np.nan, 0.6]) == stats.mean_ci([0.4, 0.6])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=8), st.lists(st.floats(0, 1), min_size=2, max_size=8))
def test_intervals_contain_their_estimate(x: list[float], y: list[float]) -> None:
    seeds = list(range(min(len(x), len(y))))
    paired = stats.compare(x[: len(seeds)], y[: len(seeds)], "x", "y", seeds, seeds, n_resamples=200)
    for ci in (stats.mean_ci(x), stats.mean_difference_ci(x, y), stats.probability_of_improvement(x, y, n_resamples=200),
               stats.difference_bootstrap_ci(x, y, n_resamples=200), paired.difference, paired.difference_bootstrap,
               paired.prob_improvement):
        assert ci.low <= ci.estimate + 1e-9 and ci.estimate <= ci.high + 1e-9


def test_curve_aggregation_aligns_steps() -> None:
    seeds = {
        0: pd.Series([0.1, 0.2, 0.3], index=[0, 10, 20]),
        1: pd.Series([0.2, 0.3, 0.4, 0.5], index=[0, 10, 20, 30]),
        2: pd.Series([0.3, 0.1], index=[0, 10]),
    }
    curve = aggregate_curve(seeds, "eval/accuracy")
    assert list(curve.steps) == [0, 10, 20, 30]
    assert list(curve.n_seeds) == [3, 3, 2, 1]
    assert curve.mean == pytest.approx([0.2, 0.2, 0.35, 0.5])
    assert curve.iqm[:2] == pytest.approx(scipy.stats.trim_mean([[0.1, 0.2, 0.3], [0.2, 0.3, 0.1]], 0.25, axis=1))
    band = _bootstrap((np.array([[0.1, 0.2, 0.3], [0.2, 0.3, 0.1]]),), np.mean)
    assert curve.low[:2] == pytest.approx(band.low) and curve.high[:2] == pytest.approx(band.high)
    assert np.isnan(curve.low[3]) and np.isnan(curve.high[3])
    assert curve.per_seed.shape == (4, 3)


SEEDS = [0, 1, 2, 3, 4, 5, 6, 7]


def _signed_rank_p_by_enumeration(d: np.ndarray) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value: every sign assignment of the ranks, equally likely."""
    ranks = scipy.stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    centre = ranks.sum() / 2
    return float(np.mean([abs(s - centre) >= abs(observed - centre) - 1e-9 for s in sums]))


def test_paired_comparison_matches_scipy_and_plain_loops() -> None:
    c = stats.compare(X, Y, "krpo", "grpo", SEEDS, SEEDS)
    d = X - Y
    assert c.analysis == "paired" and c.n_variant == c.n_reference == 8
    assert c.difference.estimate == pytest.approx(d.mean())
    expected = scipy.stats.ttest_rel(X, Y)
    assert (c.difference.low, c.difference.high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
    assert c.p_value == pytest.approx(expected.pvalue)
    assert c.rank_p_value == pytest.approx(_signed_rank_p_by_enumeration(np.round(d, 12)))
    assert c.prob_improvement.estimate == pytest.approx(np.mean(d > 0) + 0.5 * np.mean(d == 0))
    boot = scipy.stats.bootstrap((X, Y), lambda a, b, axis: np.mean(a - b, axis=axis), paired=True,
                                 n_resamples=stats.N_BOOTSTRAP, vectorized=True, method="percentile",
                                 rng=np.random.default_rng(stats.SEED)).confidence_interval
    assert (c.difference_bootstrap.low, c.difference_bootstrap.high) == pytest.approx((boot.low, boot.high))
    assert c.welch_difference == stats.mean_difference_ci(X, Y) and c.welch_p == stats.welch_p_value(X, Y)


def test_pairing_follows_seeds_not_positions() -> None:
    order = [3, 0, 7, 1, 6, 2, 5, 4]
    shuffled = stats.compare(X, Y[order], "krpo", "grpo", SEEDS, order)
    assert shuffled.difference == pytest.approx(stats.compare(X, Y, "krpo", "grpo", SEEDS, SEEDS).difference)
    assert shuffled.analysis == "paired"
    assert not stats.pairable([0, 1, 2], [0, 1, 3]) and not stats.pairable([0, 0, 1], [0, 1, 1])
    assert not stats.pairable([0, None], [0, None]) and not stats.pairable(None, [0, 1])
    assert stats.compare(X, Y, "krpo", "grpo", SEEDS, [s + 1 for s in SEEDS]).analysis == "unpaired"


def test_exact_signed_rank_p_values() -> None:
    assert stats.signed_rank_p_value([0.01, 0.02, 0.03]) == pytest.approx(0.25)  # 2 of 8 sign patterns
    assert stats.signed_rank_p_value([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == pytest.approx(2 / 64)
    with_tie = np.array([0.01, 0.01, -0.02, 0.03, 0.05])
    assert stats.signed_rank_p_value(with_tie) == pytest.approx(_signed_rank_p_by_enumeration(with_tie))
    assert stats.signed_rank_p_value([0.0, 0.0, 0.0]) == 1.0
    assert stats.signed_rank_p_value([0.0, 0.01, 0.02, 0.03]) == pytest.approx(0.25)  # zeros dropped


def test_constant_paired_differences() -> None:
    c = stats.compare([0.49, 0.52, 0.50], [0.40, 0.43, 0.41], "krpo", "grpo", [0, 1, 2], [0, 1, 2])
    assert c.difference == stats.Interval(pytest.approx(0.09), pytest.approx(0.09), pytest.approx(0.09))
    assert c.p_value == 0.0 and c.prob_improvement == stats.Interval(1.0, 1.0, 1.0) and c.mde == 0.0
    tie = stats.compare([0.5, 0.6], [0.5, 0.6], "krpo", "grpo", [0, 1], [0, 1])
    assert tie.p_value == 1.0 and tie.rank_p_value == 1.0 and tie.prob_improvement.estimate == 0.5


@pytest.mark.parametrize(("n", "effect_in_sds"), [(3, 3.264044), (5, 1.681997), (10, 0.996002)])
def test_paired_mde_matches_power_tables(n: int, effect_in_sds: float) -> None:
    """One-sample t-test, two-sided alpha 0.05, power 0.8 (statsmodels TTestPower / G*Power values)."""
    d = np.linspace(-1, 1, n)
    d = d / d.std(ddof=1) * 0.03
    assert stats.paired_mde(d) == pytest.approx(effect_in_sds * 0.03, rel=1e-5)


def test_welch_mde_equal_groups_matches_two_sample_power_table() -> None:
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert stats.welch_mde(x, x + 1) == pytest.approx(2.024440 * x.std(ddof=1), rel=1e-5)


def test_seeds_needed_is_the_first_seed_count_that_reaches_the_target() -> None:
    d = np.array([0.01, -0.02, 0.035, 0.0, -0.015])
    sd = d.std(ddof=1)
    needed = stats.paired_seeds_needed(d, 0.02)
    mde = [stats.minimum_detectable_effect(sd / math.sqrt(n), n - 1) for n in (needed - 1, needed)]
    assert mde[0] > 0.02 >= mde[1]
    x, y = np.array([0.50, 0.47, 0.53, 0.49]), np.array([0.49, 0.46, 0.50, 0.51, 0.48])
    n = stats.welch_seeds_needed(x, y, 0.02)
    for m, above in ((n - 1, True), (n, False)):
        se = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / m)
        df = (x.var(ddof=1) + y.var(ddof=1)) ** 2 * (m - 1) / (x.var(ddof=1) ** 2 + y.var(ddof=1) ** 2)
        assert (stats.minimum_detectable_effect(se, df) > 0.02) is above
    assert stats.paired_seeds_needed([0.01], 0.02) is None
    assert stats.paired_seeds_needed([0.5, -0.5], 1e-6) is None  # beyond MAX_SEEDS


def test_t_power_is_alpha_at_zero_effect_and_monotone() -> None:
    assert stats.t_power(0.0, 1.0, 4) == pytest.approx(0.05)
    powers = [stats.t_power(e, 1.0, 4) for e in (0.5, 1, 2, 4, 30)]
    assert powers == sorted(powers) and powers[-1] == pytest.approx(1.0)


def test_default_reference() -> None:
    assert stats.default_reference(["krpo", "grpo"]) == "grpo"
    assert stats.default_reference(["krpo", "rloo"]) == "krpo"
    assert stats.default_reference([]) is None


@pytest.mark.parametrize("bad", [0, -0.01, 1.5, "0.02", True])
def test_target_effect_is_validated(bad: object) -> None:
    from krpo_bench.spec.loading import SpecError
    from krpo_bench.spec.study import validate_study

    spec = {"name": "s", "kind": "ablation", "base": {"model": {"name": "tiny-arith"}, "task": {"kind": "arithmetic"}},
            "analysis": {"target_effect": bad}}
    with pytest.raises(SpecError, match=r"analysis\.target_effect"):
        validate_study(spec)
    assert validate_study({**spec, "analysis": {"target_effect": 0.05}}).analysis.target_effect == 0.05
    assert validate_study({k: v for k, v in spec.items() if k != "analysis"}).analysis.target_effect == 0.02
