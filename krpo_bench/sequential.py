"""Group-sequential design for adding seeds until a comparison is decided (pure numpy/scipy, no I/O).

A study runs `seeds` seeds, then `step` more at each look while a comparison is undecided, up to
`max_seeds`: looks at n_1 < ... < n_K = max_seeds seeds, information fractions t_k = n_k / n_K.
The type-I error is spent over the looks by the Lan-DeMets O'Brien-Fleming function
alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)). The boundaries c_k solve, for the canonical process
(Z_k jointly normal, Corr(Z_i, Z_j) = sqrt(t_i / t_j)), P(no crossing before look k, crossing at k)
= alpha(t_k) - alpha(t_{k-1}) under the null, by recursive numerical integration of the density
of the continuing paths (Armitage, McPherson and Rowe; Jennison and Turnbull ch. 19). They are
exposed as nominal per-look levels: a test's p-value at look k decides when it is at most the
level (two-sided for the difference test, one-sided for each half of a TOST, whose p is the larger
of its two one-sided p-values). Comparing t-test p-values with levels derived for the normal
process is the usual nominal-p approximation. Stopping for equivalence can only lower the
difference test's type-I error and stopping for a difference only the TOST's, so each keeps its
level over the looks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.optimize
import scipy.stats

GRID_POINTS = 801  # odd: Simpson's rule over each look's continuation interval
FAR = 12.0  # a one-sided design's lower continuation bound, in z (P(Z < -12) ~ 2e-33)
LookOutcome = Literal["decided", "continue", "undecided"]


def planned_looks(seeds: int, step: int, max_seeds: int) -> tuple[int, ...]:
    """Seed counts at which the comparisons are analysed: seeds, seeds + step, ... capped at max_seeds
    (which is always the last look)."""
    if seeds < 2 or step < 1 or max_seeds < seeds:
        raise ValueError(f"need seeds >= 2, step >= 1 and max_seeds >= seeds, got {seeds}, {step}, {max_seeds}")
    return tuple(range(seeds, max_seeds, step)) + (max_seeds,)


def information_fractions(looks: Sequence[int]) -> tuple[float, ...]:
    """t_k = n_k / n_K for increasing seed counts n_1 < ... < n_K."""
    if not looks or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] <= 0:
        raise ValueError(f"looks must be increasing positive seed counts, got {list(looks)}")
    return tuple(n / looks[-1] for n in looks)


def obrien_fleming_spending(t: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming alpha spent by information fraction t: 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))."""
    if t <= 0:
        return 0.0
    return float(2 - 2 * scipy.stats.norm.cdf(scipy.stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))


def _simpson_weights(n: int) -> np.ndarray:
    weights = np.ones(n)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights / 3.0


def _exit_probability(
    grid: np.ndarray | None, density: np.ndarray | None, variance: float, low: float, high: float
) -> float:
    """P(B(t_k) outside [low, high], having continued before) for the Brownian motion B; `grid` and
    `density` describe the continuing paths at the previous look (None at the first look)."""
    sd = math.sqrt(variance)
    if grid is None or density is None:
        return float(scipy.stats.norm.cdf(low / sd) + scipy.stats.norm.sf(high / sd))
    out = scipy.stats.norm.cdf((low - grid) / sd) + scipy.stats.norm.sf((high - grid) / sd)
    return float(np.sum(density * out))


def _continue_density(
    grid: np.ndarray | None, density: np.ndarray | None, variance: float, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """The sub-density of the paths that continue, on a grid over [low, high], as Simpson-weighted masses."""
    points = np.linspace(low, high, GRID_POINTS)
    weights = _simpson_weights(GRID_POINTS) * (points[1] - points[0])
    sd = math.sqrt(variance)
    if grid is None or density is None:
        values = scipy.stats.norm.pdf(points / sd) / sd
    else:
        values = scipy.stats.norm.pdf((points[:, None] - grid[None, :]) / sd) @ density / sd
    return points, values * weights


@functools.lru_cache(maxsize=256)
def boundaries(fractions: tuple[float, ...], alpha: float, two_sided: bool = True) -> tuple[float, ...]:
    """Critical values c_k of Z_k at each look for O'Brien-Fleming-type spending of `alpha`.

    Two-sided: reject when |Z_k| >= c_k, alpha split evenly over both tails. One-sided: reject when
    Z_k >= c_k. Computed look by look on B(t) = Z sqrt(t) by recursive numerical integration.
    """
    if any(b <= a for a, b in zip(fractions, fractions[1:])) or not 0 < fractions[0] or fractions[-1] > 1:
        raise ValueError(f"information fractions must increase within (0, 1], got {fractions}")
    critical: list[float] = []
    grid: np.ndarray | None = None
    density: np.ndarray | None = None
    previous_t, spent = 0.0, 0.0
    for t in fractions:
        target = obrien_fleming_spending(t, alpha) - spent
        variance, root = t - previous_t, math.sqrt(t)

        def exit_minus_target(c: float) -> float:
            low = -c * root if two_sided else -FAR * root
            return _exit_probability(grid, density, variance, low, c * root) - target

        c = float(scipy.optimize.brentq(exit_minus_target, 0.0, FAR, xtol=1e-12))
        critical.append(c)
        spent += target
        low = -c * root if two_sided else -FAR * root
        grid, density = _continue_density(grid, density, variance, low, c * root)
        previous_t = t
    return tuple(critical)


def nominal_levels(fractions: Sequence[float], alpha: float, two_sided: bool = True) -> tuple[float, ...]:
    """Per-look significance levels: a p-value (two-sided, or one-sided) at look k decides when it is
    at most level k; together they spend exactly `alpha` over the looks."""
    return _nominal_levels(tuple(float(t) for t in fractions), float(alpha), two_sided)


@functools.lru_cache(maxsize=256)
def _nominal_levels(fractions: tuple[float, ...], alpha: float, two_sided: bool) -> tuple[float, ...]:
    tails = 2.0 if two_sided else 1.0
    return tuple(float(tails * scipy.stats.norm.sf(c)) for c in boundaries(fractions, alpha, two_sided))


def look_decision(look: int, planned: Sequence[int], p_difference: float, p_tost: float, alpha: float) -> LookOutcome:
    """Whether a comparison is settled at look number `look` (1-based) of the `planned` seed counts.

    "decided" when the two-sided difference p-value is at most the look's two-sided nominal level or
    the TOST p-value at most the one-sided nominal level (each TOST half is a one-sided test at
    level alpha); otherwise "continue", or "undecided" at the last planned look. NaN p-values
    decide nothing.
    """
    if not 1 <= look <= len(planned):
        raise ValueError(f"look must be between 1 and {len(planned)}, got {look}")
    fractions = information_fractions(planned)
    difference_level = nominal_levels(fractions, alpha, two_sided=True)[look - 1]
    tost_level = nominal_levels(fractions, alpha, two_sided=False)[look - 1]
    if p_difference <= difference_level or p_tost <= tost_level:
        return "decided"
    return "undecided" if look == len(planned) else "continue"
