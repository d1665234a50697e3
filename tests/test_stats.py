"""krpo_bench.dashboards.stats against scipy / rliable / numpy on fixed numbers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from rliable import metrics as rly

from krpo_bench.dashboards import stats
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
    assert c.sentence == f"krpo beats grpo by +6.5 points, 95 % CI [{d.low * 100:+.1f}, {d.high * 100:+.1f}]"
    assert c.sentence == "krpo beats grpo by +6.5 points, 95 % CI [+1.7, +11.3]"


def test_verdict_loss() -> None:
    c = stats.compare(Y, X, "krpo", "grpo")
    assert c.sentence == "krpo trails grpo by 6.5 points (difference -6.5 points, 95 % CI [-11.3, -1.7])"


def test_verdict_no_difference() -> None:
    x, y = np.array([0.50, 0.47, 0.53, 0.49, 0.52]), np.array([0.49, 0.46, 0.50, 0.51, 0.48])
    c = stats.compare(x, y, "krpo", "grpo")
    assert c.difference.low < 0 < c.difference.high
    assert c.sentence.startswith("no detectable difference between krpo and grpo with 5 seeds (difference +1.4 points")
    c = stats.compare(x[:4], y, "krpo", "grpo")
    assert "with 4 and 5 seeds" in c.sentence


def test_single_seed_has_no_interval() -> None:
    c = stats.compare([0.52], Y, "krpo", "grpo")
    assert math.isnan(c.difference.low) and math.isnan(c.difference.high) and math.isnan(c.welch_p)
    assert c.difference.estimate == pytest.approx(0.52 - Y.mean())
    assert c.sentence == (
        "cannot tell whether krpo beats grpo: only one seed of krpo, so no confidence interval "
        "(difference +7.0 points)"
    )
    for ci in (stats.mean_ci([0.5]), stats.iqm_ci([0.5]), stats.mean_ci([0.5], method="bootstrap")):
        assert ci.estimate == 0.5 and math.isnan(ci.low) and math.isnan(ci.high)
    assert stats.compare([], Y, "krpo", "grpo").sentence == "cannot compare krpo with grpo: no finished seeds of krpo"


def test_zero_variance() -> None:
    same = stats.compare([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], "krpo", "grpo")
    assert (same.difference.low, same.difference.high) == pytest.approx((0.1, 0.1))
    assert same.welch_p == 0.0 and same.prob_improvement.estimate == 1.0
    assert same.sentence.startswith("krpo beats grpo by +10.0 points")
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
    for ci in (stats.mean_ci(x), stats.mean_difference_ci(x, y), stats.probability_of_improvement(x, y, n_resamples=200)):
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
