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
from krpo_bench.dashboards.curves import aggregate_curve
from rliable import metrics as rly

from krpo_bench import stats

X = np.array([0.52, 0.47, 0.55, 0.50, 0.49, 0.61, 0.45, 0.53])
Y = np.array([0.44, 0.48, 0.41, 0.51, 0.43, 0.46, 0.40, 0.47])


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _bootstrap(samples, statistic, seed=stats.SEED):
    return scipy.stats.bootstrap(
        samples,
        statistic,
        n_resamples=stats.N_BOOTSTRAP,
        axis=-1,
        vectorized=True,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval


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


def test_comparison_win_and_loss() -> None:
    c = stats.compare(X, Y, "krpo", "grpo")
    assert c.analysis == "unpaired" and c.difference == stats.mean_difference_ci(X, Y)
    assert (c.difference.estimate, c.difference.low, c.difference.high) == pytest.approx(
        (0.065, 0.017, 0.113), abs=5e-4
    )
    assert round(c.mde * 100, 1) == 6.7 and c.seeds_needed == 78
    loss = stats.compare(Y, X, "krpo", "grpo")
    assert (loss.difference.low, loss.difference.high) == pytest.approx((-c.difference.high, -c.difference.low))


def test_comparison_without_a_difference() -> None:
    x, y = np.array([0.50, 0.47, 0.53, 0.49, 0.52]), np.array([0.49, 0.46, 0.50, 0.51, 0.48])
    c = stats.compare(x, y, "krpo", "grpo", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert c.analysis == "paired" and c.difference.low < 0 < c.difference.high
    assert round(c.mde * 100, 1) == 3.9 and c.seeds_needed == 13
    c = stats.compare(x[:4], y, "krpo", "grpo", [0, 1, 2, 3], [0, 1, 2, 3, 4])
    assert c.analysis == "unpaired" and (c.n_variant, c.n_reference) == (4, 5) and c.seeds_needed == 21
    assert stats.compare(x, y, "krpo", "grpo", target_effect=0.05).seeds_needed < 21


def test_single_seed_has_no_interval() -> None:
    c = stats.compare([0.52], Y, "krpo", "grpo")
    assert math.isnan(c.difference.low) and math.isnan(c.difference.high) and math.isnan(c.welch_p)
    assert math.isnan(c.mde) and c.seeds_needed is None
    assert c.difference.estimate == pytest.approx(0.52 - Y.mean())
    for ci in (stats.mean_ci([0.5]), stats.iqm_ci([0.5]), stats.mean_ci([0.5], method="bootstrap")):
        assert ci.estimate == 0.5 and math.isnan(ci.low) and math.isnan(ci.high)
    assert stats.compare([], Y, "krpo", "grpo").n_variant == 0
    pair = stats.compare([0.52], [0.50], "krpo", "grpo", [3], [3])
    assert pair.analysis == "paired" and math.isnan(pair.p_value) and math.isnan(pair.rank_p_value)


def test_zero_variance() -> None:
    same = stats.compare([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], "krpo", "grpo")
    assert (same.difference.low, same.difference.high) == pytest.approx((0.1, 0.1))
    assert same.welch_p == 0.0 and same.prob_improvement.estimate == 1.0
    assert same.mde == 0 and same.seeds_needed == 2
    tie = stats.compare([0.5, 0.5], [0.5, 0.5], "krpo", "grpo")
    assert tie.welch_p == 1.0 and tie.prob_improvement.estimate == 0.5
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
    for ci in (
        stats.mean_ci(x),
        stats.mean_difference_ci(x, y),
        stats.probability_of_improvement(x, y, n_resamples=200),
        stats.difference_bootstrap_ci(x, y, n_resamples=200),
        paired.difference,
        paired.difference_bootstrap,
        paired.prob_improvement,
    ):
        if np.isnan(ci.estimate):  # the exact win share has no estimate when every pair is tied
            assert ci is paired.prob_improvement and not ci.defined
            continue
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
    assert c.prob_improvement == stats.paired_win_share_exact(d).share  # exact interval, ties left out
    boot = scipy.stats.bootstrap(
        (X, Y),
        lambda a, b, axis: np.mean(a - b, axis=axis),
        paired=True,
        n_resamples=stats.N_BOOTSTRAP,
        vectorized=True,
        method="percentile",
        rng=np.random.default_rng(stats.SEED),
    ).confidence_interval
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
    assert c.p_value == 0.0 and c.mde == 0.0
    assert c.prob_improvement == stats.Interval(1.0, pytest.approx(0.025 ** (1 / 3)), 1.0)  # 3 of 3: exact
    tie = stats.compare([0.5, 0.6], [0.5, 0.6], "krpo", "grpo", [0, 1], [0, 1])
    assert tie.p_value == 1.0 and tie.rank_p_value == 1.0 and np.isnan(tie.prob_improvement.estimate)  # no untied pair


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

    spec = {
        "name": "s",
        "kind": "ablation",
        "base": {"model": {"name": "tiny-arith"}, "task": {"kind": "arithmetic"}},
        "analysis": {"target_effect": bad},
    }
    with pytest.raises(SpecError, match=r"analysis\.target_effect"):
        validate_study(spec)
    assert validate_study({**spec, "analysis": {"target_effect": 0.05}}).analysis.target_effect == 0.05
    assert validate_study({k: v for k, v in spec.items() if k != "analysis"}).analysis.target_effect == 0.02


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: sort, multiply by (m - rank), running max, cap at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_holm_matches_the_step_down_rule_and_skips_nans() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert stats.holm(p) == pytest.approx(_holm_by_hand(p))
    assert stats.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])
    with_nan = stats.holm([0.01, np.nan, 0.04, 0.03])
    assert np.isnan(with_nan[1]) and with_nan[[0, 2, 3]] == pytest.approx(_holm_by_hand([0.01, 0.04, 0.03]))
    assert stats.holm([]).size == 0 and np.isnan(stats.holm([np.nan])).all()


D = np.array([0.012, -0.004, 0.021, 0.003, 0.009, -0.001])


def _bounds(ci: stats.Interval) -> tuple[float, float, float]:
    return ci.estimate, ci.low, ci.high


def test_paired_tost_is_two_one_sided_t_tests() -> None:
    x = Y[:6] + D
    result = stats.tost(x, Y[:6], 0.02, paired=True)
    lower = scipy.stats.ttest_1samp(D + 0.02, 0.0, alternative="greater").pvalue
    upper = scipy.stats.ttest_1samp(D - 0.02, 0.0, alternative="less").pvalue
    assert result.p_value == pytest.approx(max(lower, upper))
    assert _bounds(result.interval) == pytest.approx(_bounds(stats.mean_ci(D, 0.90)))
    for margin in (0.005, 0.01, 0.015, 0.02, 0.03):  # rejects at 5 % exactly when the 90 % interval is inside
        check = stats.tost(x, Y[:6], margin, paired=True)
        assert (check.p_value < 0.05) == (-margin < check.interval.low and check.interval.high < margin)


def test_unpaired_tost_is_two_welch_one_sided_tests() -> None:
    result = stats.tost(X, Y, 0.1, paired=False)
    lower = scipy.stats.ttest_ind(X + 0.1, Y, equal_var=False, alternative="greater").pvalue
    upper = scipy.stats.ttest_ind(X - 0.1, Y, equal_var=False, alternative="less").pvalue
    assert result.p_value == pytest.approx(max(lower, upper))
    assert _bounds(result.interval) == pytest.approx(_bounds(stats.mean_difference_ci(X, Y, 0.90)))


def test_tost_degenerate_cases() -> None:
    assert math.isnan(stats.tost([0.5], [0.4], 0.02, paired=True).p_value)
    assert math.isnan(stats.tost([0.5], Y, 0.02, paired=False).p_value)
    assert stats.tost([0.51, 0.52], [0.50, 0.51], 0.02, paired=True).p_value == 0.0
    assert stats.tost([0.55, 0.56], [0.50, 0.51], 0.02, paired=True).p_value == 1.0
    assert stats.tost([0.5, 0.5], [0.49, 0.49], 0.02, paired=False).p_value == 0.0
    assert stats.tost([0.5, np.nan, 0.52], [0.49, 0.3, 0.51], 0.02, paired=True).p_value == 0.0


def test_decide() -> None:
    ci = stats.Interval(0.01, -0.01, 0.03)
    assert stats.decide(0.01, 0.5, 0.05, 0.03, ci, 0.02) == "better"
    assert stats.decide(0.01, 0.01, 0.05, -0.005, ci, 0.02) == "worse"
    assert stats.decide(0.3, 0.01, 0.05, 0.001, ci, 0.02) == "equivalent"
    assert stats.decide(0.3, 0.2, 0.05, 0.01, ci, 0.02) == "undecided"
    assert stats.decide(np.nan, np.nan, 0.05, 0.01, ci, 0.02) == "undecided"
    assert stats.decide(0.0, 1.0, 0.05, 0.01, stats.Interval(0.01, np.nan, np.nan), 0.02) == "undecided"
    with pytest.raises(ValueError, match="margin"):
        stats.decide(0.3, 0.2, 0.05, 0.01, ci, 0.0)


def test_decision_probability_matches_t_power_and_simulation() -> None:
    assert stats.decision_probability(0.01, 0.01, 4, 0.0) == pytest.approx(stats.t_power(0.01, 0.01, 4), abs=1e-9)
    rng = np.random.default_rng(8)
    n, sd, effect, margin = 6, 0.02, 0.005, 0.02
    d = effect + rng.normal(0.0, sd, (40_000, n))
    mean, se = d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)
    significant = np.abs(mean / se) > scipy.stats.t.ppf(0.975, n - 1)
    equivalent = np.abs(mean) < margin - scipy.stats.t.ppf(0.95, n - 1) * se
    expected = stats.decision_probability(effect, sd / math.sqrt(n), n - 1, margin)
    assert np.mean(significant | equivalent) == pytest.approx(expected, abs=0.01)


def test_seeds_to_decide_is_the_first_seed_count_reaching_the_power() -> None:
    needed = stats.paired_seeds_to_decide(D, 0.01)
    sd, mean = D.std(ddof=1), D.mean()
    reach = [stats.decision_probability(mean, sd / math.sqrt(n), n - 1, 0.01) for n in (needed - 1, needed)]
    assert reach[0] < stats.POWER <= reach[1]
    assert stats.paired_seeds_to_decide([0.01], 0.02) is None
    assert stats.paired_seeds_to_decide([0.5, -0.5], 1e-6) is None
    n = stats.welch_seeds_to_decide(X, Y, 0.1)
    assert n is not None and n >= 2
    assert stats.welch_seeds_to_decide(X[:1], Y, 0.1) is None


def test_exact_win_share() -> None:
    five = stats.paired_win_share_exact([0.01, 0.02, 0.005, 0.03, 0.01])
    assert _bounds(five.share) == pytest.approx((1.0, 0.4782, 1.0), abs=1e-4)
    assert five.share.low == pytest.approx(scipy.stats.beta.ppf(0.025, 5, 1))  # Clopper-Pearson lower bound
    mixed = stats.paired_win_share_exact([0.01, -0.02, 0.0, 0.03, 0.0, 0.02])
    assert (mixed.wins, mixed.pairs, mixed.ties) == (3, 4, 2)
    assert mixed.share.low == pytest.approx(scipy.stats.beta.ppf(0.025, 3, 2))
    assert mixed.share.high == pytest.approx(scipy.stats.beta.ppf(0.975, 4, 1))
    assert math.isnan(stats.paired_win_share_exact([0.0, 0.0]).share.estimate)


def test_curve_auc_is_the_mean_over_the_step_span() -> None:
    assert stats.curve_auc([0, 10, 30], [0.2, 0.4, 0.4]) == pytest.approx((10 * 0.3 + 20 * 0.4) / 30)
    assert stats.curve_auc([30, 0, 10, 20], [0.4, 0.2, 0.4, np.nan]) == pytest.approx((10 * 0.3 + 20 * 0.4) / 30)
    assert stats.curve_auc([5], [0.3]) == 0.3 and math.isnan(stats.curve_auc([], []))


def _pitman_morgan_t(x: np.ndarray, y: np.ndarray, ratio: float) -> float:
    r = np.corrcoef(x + ratio * y, x - ratio * y)[0, 1]
    return float(r * math.sqrt((x.size - 2) / (1 - r**2)))


def test_spread_ratio_intervals() -> None:
    unpaired = stats.spread_ratio(X, Y, paired=False)
    f = X.var(ddof=1) / Y.var(ddof=1)
    assert unpaired.estimate == pytest.approx(math.sqrt(f))
    assert unpaired.low**2 == pytest.approx(f / scipy.stats.f.ppf(0.975, 7, 7))
    assert unpaired.high**2 == pytest.approx(f * scipy.stats.f.ppf(0.975, 7, 7))
    paired = stats.spread_ratio(X, Y, paired=True)
    critical = scipy.stats.t.ppf(0.975, X.size - 2)
    for bound in (paired.low, paired.high):  # the bounds are where the Pitman-Morgan test is just significant
        assert abs(_pitman_morgan_t(X, Y, bound)) == pytest.approx(critical, rel=1e-8)
    assert abs(_pitman_morgan_t(X, Y, paired.estimate)) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(stats.spread_ratio(X[:2], Y[:2], paired=True).low)
    assert math.isnan(stats.spread_ratio([0.5, 0.5], Y, paired=False).low)


def test_binomial_item_se() -> None:
    assert stats.binomial_item_se(0.79, 200) == pytest.approx(0.0288, abs=1e-4)
    assert math.isnan(stats.binomial_item_se(0.5, 0))


def _mean_squares_by_loops(z: np.ndarray) -> tuple[float, float, float]:
    rows, cols = z.shape
    grand = sum(sum(r) for r in z) / (rows * cols)
    row_means = [sum(z[i]) / cols for i in range(rows)]
    col_means = [sum(z[i][j] for i in range(rows)) / rows for j in range(cols)]
    ms_row = cols * sum((m - grand) ** 2 for m in row_means) / (rows - 1)
    ms_col = rows * sum((m - grand) ** 2 for m in col_means) / (cols - 1)
    ms_res = sum((z[i][j] - row_means[i] - col_means[j] + grand) ** 2 for i in range(rows) for j in range(cols))
    return ms_row, ms_col, ms_res / ((rows - 1) * (cols - 1))


def test_two_level_interval_paired_by_seed_and_item() -> None:
    rng = np.random.default_rng(9)
    p = rng.uniform(0.3, 0.9, 40)
    x = (rng.random((5, 40)) < np.clip(p + rng.normal(0, 0.2, 40), 0, 1)).astype(float)
    y = (rng.random((5, 40)) < p).astype(float)
    result = stats.two_level_interval(x, y, paired=True)
    ms_row, ms_col, ms_res = _mean_squares_by_loops(x - y)
    assert ms_col > ms_res
    variance = (ms_row + ms_col - ms_res) / 200
    df = variance**2 / ((ms_row / 200) ** 2 / 4 + (ms_col / 200) ** 2 / 39 + (ms_res / 200) ** 2 / (4 * 39))
    half = scipy.stats.t.ppf(0.975, df) * math.sqrt(variance)
    assert _bounds(result.difference) == pytest.approx(((x - y).mean(), (x - y).mean() - half, (x - y).mean() + half))
    assert result.df == pytest.approx(df) and result.item_share == pytest.approx((ms_col - ms_res) / 200 / variance)


def test_two_level_interval_without_item_effect_is_the_seed_t_interval() -> None:
    """When the item means vary no more than the seed x item noise explains, only seeds count:
    the interval is the t-interval of the per-seed mean differences."""
    x = np.array([[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 0, 1]], dtype=float)
    y = np.array([[0, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1]], dtype=float)
    assert _mean_squares_by_loops(x - y)[1] <= _mean_squares_by_loops(x - y)[2]
    result = stats.two_level_interval(x, y, paired=True)
    assert _bounds(result.difference) == pytest.approx(_bounds(stats.mean_ci((x - y).mean(axis=1))))
    assert result.item_share == 0.0 and result.df == pytest.approx(2.0)


def test_two_level_interval_unpaired_seeds() -> None:
    rng = np.random.default_rng(10)
    x, y = (rng.random((4, 30)) < 0.7).astype(float), (rng.random((6, 30)) < 0.6).astype(float)
    result = stats.two_level_interval(x, y, paired=False)
    (msx, _, rx), (msy, _, ry) = _mean_squares_by_loops(x), _mean_squares_by_loops(y)
    item = max(0.0, np.var(x.mean(0) - y.mean(0), ddof=1) / 30 - rx / 120 - ry / 180)
    variance = msx / 120 + msy / 180 + item
    assert result.difference.estimate == pytest.approx(x.mean() - y.mean())
    assert result.difference.width / 2 / math.sqrt(variance) == pytest.approx(scipy.stats.t.ppf(0.975, result.df))
    assert math.isnan(stats.two_level_interval(x[:1], y, paired=False).difference.low)
    with pytest.raises(ValueError, match="same items"):
        stats.two_level_interval(x, y[:, :10], paired=False)
