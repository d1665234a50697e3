"""krpo_bench.sequential: spending, boundaries against scipy's multivariate normal, per-look decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from krpo_bench import sequential

FOUR = (0.25, 0.5, 0.75, 1.0)


def test_planned_looks_and_fractions() -> None:
    assert sequential.planned_looks(5, 5, 20) == (5, 10, 15, 20)
    assert sequential.planned_looks(5, 4, 15) == (5, 9, 13, 15)
    assert sequential.planned_looks(5, 5, 5) == (5,)
    assert sequential.information_fractions((5, 10, 15, 20)) == FOUR
    with pytest.raises(ValueError):
        sequential.planned_looks(5, 5, 4)
    with pytest.raises(ValueError):
        sequential.information_fractions((10, 5))


def test_obrien_fleming_spending() -> None:
    assert sequential.obrien_fleming_spending(1.0, 0.05) == pytest.approx(0.05)
    assert sequential.obrien_fleming_spending(0.25, 0.05) == pytest.approx(2 * scipy.stats.norm.sf(1.959964 / 0.5))
    assert sequential.obrien_fleming_spending(0.0, 0.05) == 0.0


def _canonical_covariance(fractions: tuple[float, ...]) -> np.ndarray:
    t = np.array(fractions)
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


@pytest.mark.parametrize("two_sided", [True, False])
def test_boundaries_spend_alpha_under_the_joint_normal(two_sided: bool) -> None:
    """P(crossing by look k) under the canonical joint normal, by scipy's multivariate normal cdf
    (Genz's quasi Monte Carlo, ~1e-5), equals the spending function at t_k."""
    c = np.array(sequential.boundaries(FOUR, 0.05, two_sided))
    cov = _canonical_covariance(FOUR)
    for k in range(1, 5):
        normal = scipy.stats.multivariate_normal(np.zeros(k), cov[:k, :k])
        lower = -c[:k] if two_sided else np.full(k, -np.inf)
        crossed = 1 - normal.cdf(c[:k], lower_limit=lower, rng=np.random.default_rng(0))
        assert crossed == pytest.approx(sequential.obrien_fleming_spending(FOUR[k - 1], 0.05), abs=3e-5)
    first = sequential.obrien_fleming_spending(0.25, 0.05) / (2 if two_sided else 1)
    assert c[0] == pytest.approx(scipy.stats.norm.isf(first))


def test_one_look_is_the_fixed_design() -> None:
    assert sequential.boundaries((1.0,), 0.05) == pytest.approx((scipy.stats.norm.isf(0.025),))
    assert sequential.nominal_levels((1.0,), 0.05) == pytest.approx((0.05,))
    assert sequential.nominal_levels((1.0,), 0.05, two_sided=False) == pytest.approx((0.05,))


def test_nominal_levels_grow_and_stay_below_alpha() -> None:
    levels = sequential.nominal_levels(FOUR, 0.05)
    assert list(levels) == sorted(levels) and levels[-1] < 0.05
    assert levels[0] == pytest.approx(sequential.obrien_fleming_spending(0.25, 0.05))
    assert levels == pytest.approx(tuple(2 * scipy.stats.norm.sf(c) for c in sequential.boundaries(FOUR, 0.05)))


def test_look_decision() -> None:
    looks = (5, 10, 15, 20)
    assert sequential.look_decision(1, looks, 0.001, 0.5, 0.05) == "continue"  # 0.001 > 8.9e-5 at t = 0.25
    assert sequential.look_decision(1, looks, 5e-5, 0.5, 0.05) == "decided"
    assert sequential.look_decision(2, looks, 0.5, 0.004, 0.05) == "decided"
    assert sequential.look_decision(4, looks, 0.045, 0.5, 0.05) == "undecided"  # final level ~0.041
    assert sequential.look_decision(4, looks, 0.04, math.nan, 0.05) == "decided"
    assert sequential.look_decision(3, looks, math.nan, math.nan, 0.05) == "continue"
    with pytest.raises(ValueError):
        sequential.look_decision(5, looks, 0.5, 0.5, 0.05)
