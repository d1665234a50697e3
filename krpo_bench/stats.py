"""Statistics for comparing variants over seeds: intervals, tests, power (pure numpy/scipy, no I/O).

Every function takes plain 1-D arrays of per-seed scores (NaNs are dropped), never warns, and returns
NaN bounds where a sample is too small for an interval (a single seed). Bootstrap intervals are
percentile intervals from `scipy.stats.bootstrap` with a fixed seed, so a report is reproducible;
resampling each sample on its own is rliable's stratified bootstrap for one task.

Two variants that ran the same seeds (an ablation: same seed, same warm start, data order and
sampling stream) are compared seed by seed ("paired"): the mean of the per-seed differences with a
t-interval and a bootstrap interval over the pairs, the paired t-test, the Wilcoxon signed-rank test
and the share of untied pairs the variant wins with its exact (Clopper-Pearson) interval. Variants whose seed sets differ are compared as independent
samples ("unpaired"): Welch's t-interval and test, the Wilcoxon rank-sum (Mann-Whitney U) test and
P(X > Y) over all cross pairs. The pairing is all or nothing: no pairing on a common subset.

Power: the minimum detectable effect (MDE) is the true difference a two-sided t-test at level
1 - confidence finds with probability `POWER`, computed from the noncentral t distribution with the
observed spread taken as the true one (paired: the sd of the differences, n - 1 degrees of freedom;
unpaired: Welch's standard error and Welch-Satterthwaite degrees of freedom). For the paired test this
is exact given the spread; for Welch's test it ignores that the df is itself estimated, which
overstates its power a little at few seeds (simulated: 78 % rather than 80 % at 5 seeds a variant,
69 % at 3). The seeds needed for a target effect are the fewest seeds (per variant) whose MDE at
that spread is at most the target.

Verdicts that decide: `tost` tests equivalence within a margin, `decide` reads a comparison as
better / worse / equivalent / undecided from (Holm-adjusted, `holm`) p-values, and
`paired_seeds_to_decide` / `welch_seeds_to_decide` say about how many seeds would settle an
undecided one. `two_level_interval` takes [seeds x items] outcomes so an interval covers the test
items' noise as well as the seeds'; `paired_win_share_exact` is the paired P(improvement) (a
bootstrap over 5 pairs collapses to [1, 1] where the exact interval is [0.48, 1]); `curve_auc` and `spread_ratio` serve the secondary endpoints.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats
import statsmodels.stats.multitest
import statsmodels.stats.weightstats

CONFIDENCE = 0.95
POWER = 0.8
TARGET_EFFECT = 0.02
N_BOOTSTRAP = 2000
SEED = 0
NAN = float("nan")
MAX_SEEDS = 100_000  # seeds needed beyond this are reported as None
TIE_DECIMALS = 12  # differences equal to this many decimals are ties (0.49 - 0.40 == 0.52 - 0.43)

ArrayLike = Sequence[float] | np.ndarray
Analysis = Literal["paired", "unpaired"]
Decision = Literal["better", "worse", "equivalent", "undecided"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with the bounds of its confidence interval (NaN when undefined)."""

    estimate: float
    low: float
    high: float

    @property
    def defined(self) -> bool:
        """Whether both bounds are finite numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def width(self) -> float:
        """high - low (NaN when undefined)."""
        return self.high - self.low if self.defined else NAN

    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of zero."""
        return self.defined and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Comparison:
    """Variant X against reference Y on one per-seed score.

    `difference` is the t-interval of the analysis used (paired or Welch), `difference_bootstrap`
    its percentile-bootstrap counterpart, `p_value` the matching t-test and `rank_p_value` the
    Wilcoxon signed-rank (paired) or rank-sum (unpaired) test. `welch_difference`/`welch_p` are the
    unpaired analysis whatever the pairing, so the two intervals can be set side by side. `mde` is
    the minimum detectable effect for the seeds run and `seeds_needed` the seeds (per variant) that
    would detect `target_effect`; both at `POWER` and level 1 - `confidence`, NaN/None below two seeds.
    """

    variant: str
    reference: str
    analysis: Analysis
    n_variant: int
    n_reference: int
    difference: Interval
    difference_bootstrap: Interval
    prob_improvement: Interval
    p_value: float
    rank_p_value: float
    welch_difference: Interval
    welch_p: float
    mde: float
    target_effect: float
    seeds_needed: int | None
    confidence: float


def clean(values: ArrayLike) -> np.ndarray:
    """Return the finite values as a 1-D float array."""
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _constant(x: np.ndarray) -> bool:
    return x.size > 0 and bool(np.ptp(x) == 0)


def _bootstrap(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    result = scipy.stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=False,
        axis=-1,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _bootstrapped(
    estimate: float,
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    degenerate: bool,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    """`estimate` with its bootstrap interval: NaN bounds below two values in a sample, a point
    interval when resampling cannot change the statistic (`degenerate`)."""
    if min(sample.size for sample in samples) < 2:
        return Interval(estimate, NAN, NAN)
    if degenerate:
        return Interval(estimate, estimate, estimate)
    return Interval(estimate, *_bootstrap(samples, statistic, confidence, n_resamples, seed))


def mean_ci(
    values: ArrayLike,
    confidence: float = CONFIDENCE,
    method: Literal["t", "bootstrap"] = "t",
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Interval:
    """Mean with a Student-t interval (default) or a percentile-bootstrap interval."""
    x = clean(values)
    if x.size == 0:
        return Interval(NAN, NAN, NAN)
    mean = float(np.mean(x))
    if x.size == 1:
        return Interval(mean, NAN, NAN)
    if _constant(x):
        return Interval(mean, mean, mean)
    if method == "t":
        sem = scipy.stats.sem(x)
        if sem == 0:  # spread below float resolution
            return Interval(mean, mean, mean)
        low, high = scipy.stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
        return Interval(mean, float(low), float(high))
    if method == "bootstrap":
        return Interval(mean, *_bootstrap((x,), np.mean, confidence, n_resamples, seed))
    raise ValueError(f"unknown interval method {method!r}; use 't' or 'bootstrap'")


def _trimmed_mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return scipy.stats.trim_mean(x, proportiontocut=0.25, axis=axis)


def iqm_ci(
    values: ArrayLike,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Interval:
    """Interquartile mean (the 25 %-trimmed mean, rliable's `aggregate_iqm`) with a bootstrap interval."""
    x = clean(values)
    if x.size == 0:
        return Interval(NAN, NAN, NAN)
    return _bootstrapped(float(_trimmed_mean(x)), (x,), _trimmed_mean, _constant(x), confidence, n_resamples, seed)


def _poi_statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    u = scipy.stats.mannwhitneyu(x, y, alternative="greater", axis=axis).statistic
    return u / (x.shape[axis] * y.shape[axis])


def probability_of_improvement(
    x: ArrayLike,
    y: ArrayLike,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Interval:
    """P(X > Y) over all cross pairs (rliable's, ties count one half) with a stratified bootstrap CI."""
    return _two_sample_bootstrap(x, y, _poi_statistic, confidence, n_resamples, seed)


def _two_sample_bootstrap(
    x: ArrayLike,
    y: ArrayLike,
    statistic: Callable[..., np.ndarray],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    x, y = clean(x), clean(y)
    if x.size == 0 or y.size == 0:
        return Interval(NAN, NAN, NAN)
    degenerate = _constant(x) and _constant(y)
    return _bootstrapped(float(statistic(x, y)), (x, y), statistic, degenerate, confidence, n_resamples, seed)


def _welch(x: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return scipy.stats.ttest_ind(x, y, equal_var=False)


def mean_difference_ci(x: ArrayLike, y: ArrayLike, confidence: float = CONFIDENCE) -> Interval:
    """Difference of means X - Y with Welch's (unequal-variance) t-interval."""
    x, y = clean(x), clean(y)
    if x.size == 0 or y.size == 0:
        return Interval(NAN, NAN, NAN)
    diff = float(np.mean(x) - np.mean(y))
    if min(x.size, y.size) < 2:
        return Interval(diff, NAN, NAN)
    if _constant(x) and _constant(y):
        return Interval(diff, diff, diff)
    ci = _welch(x, y).confidence_interval(confidence_level=confidence)
    return Interval(diff, float(ci.low), float(ci.high))


def welch_p_value(x: ArrayLike, y: ArrayLike) -> float:
    """Two-sided p-value of Welch's t-test (NaN with fewer than two seeds on a side).

    When both samples are constant the test degenerates; its limit is used: p = 1 for equal
    means and p = 0 otherwise.
    """
    x, y = clean(x), clean(y)
    if min(x.size, y.size) < 2:
        return NAN
    if _constant(x) and _constant(y):
        return 1.0 if x[0] == y[0] else 0.0
    return float(_welch(x, y).pvalue)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def difference_bootstrap_ci(
    x: ArrayLike,
    y: ArrayLike,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Interval:
    """Difference of means X - Y with a percentile interval resampling each sample on its own."""
    return _two_sample_bootstrap(x, y, _mean_difference, confidence, n_resamples, seed)


def rank_sum_p_value(x: ArrayLike, y: ArrayLike) -> float:
    """Two-sided p-value of the Wilcoxon rank-sum (Mann-Whitney U) test, exact where scipy can."""
    x, y = clean(x), clean(y)
    if min(x.size, y.size) < 2:
        return NAN
    if _constant(np.concatenate([x, y])):
        return 1.0
    return float(scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="auto").pvalue)


def paired_differences(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """X - Y seed by seed, rounded to `TIE_DECIMALS` (NaN pairs dropped); both arrays must hold the
    same seeds in the same order."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples need the same number of seeds, got {x.size} and {y.size}")
    return np.round(clean(x - y), TIE_DECIMALS)


def paired_p_value(differences: ArrayLike) -> float:
    """Two-sided p-value of the paired t-test on per-seed differences (NaN below two pairs).

    Constant differences degenerate the test; its limit is used: p = 1 when all are zero, else 0.
    """
    d = clean(differences)
    if d.size < 2:
        return NAN
    if _constant(d):
        return 1.0 if d[0] == 0 else 0.0
    return float(scipy.stats.ttest_1samp(d, 0.0).pvalue)


def signed_rank_p_value(differences: ArrayLike) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test on per-seed differences.

    Zero differences are dropped (Wilcoxon's convention). The p-value is exact when the remaining
    absolute differences are distinct; with ties scipy's "auto" method runs the exhaustive
    permutation distribution up to 13 pairs and the normal approximation beyond. All differences
    zero gives p = 1; fewer than two pairs gives NaN.
    """
    d = clean(differences)
    if d.size < 2:
        return NAN
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return 1.0
    distinct = np.unique(np.abs(nonzero)).size == nonzero.size
    return float(scipy.stats.wilcoxon(nonzero, method="exact" if distinct else "auto").pvalue)


def t_power(effect: float, standard_error: float, df: float, confidence: float = CONFIDENCE) -> float:
    """Power of a two-sided t-test at level 1 - `confidence` against a true difference `effect`."""
    critical = scipy.stats.t.ppf(1 - (1 - confidence) / 2, df)
    noncentrality = abs(effect) / standard_error
    # the lower tail as sf at -noncentrality: scipy's nct.cdf returns NaN far in that tail
    return float(scipy.stats.nct.sf(critical, df, noncentrality) + scipy.stats.nct.sf(critical, df, -noncentrality))


def _noncentrality_for_power(df: float, confidence: float, power: float) -> float:
    critical = scipy.stats.t.ppf(1 - (1 - confidence) / 2, df)
    high = critical + scipy.stats.norm.ppf(power) + 1.0
    while t_power(high, 1.0, df, confidence) < power:
        high *= 2
    return float(scipy.optimize.brentq(lambda nc: t_power(nc, 1.0, df, confidence) - power, 0.0, high, xtol=1e-10))


def minimum_detectable_effect(
    standard_error: float, df: float, confidence: float = CONFIDENCE, power: float = POWER
) -> float:
    """The true difference a two-sided t-test with this standard error and df detects with `power`."""
    if not (math.isfinite(standard_error) and math.isfinite(df)) or df <= 0:
        return NAN
    if standard_error == 0:
        return 0.0
    return _noncentrality_for_power(df, confidence, power) * standard_error


def _spread(x: np.ndarray) -> float:
    return 0.0 if _constant(x) else float(np.std(x, ddof=1))


def _paired_design(sd: float, n: int) -> tuple[float, float]:
    return sd / math.sqrt(n), n - 1.0


def _welch_design(sd_x: float, sd_y: float, n_x: int, n_y: int) -> tuple[float, float]:
    vx, vy = sd_x**2 / n_x, sd_y**2 / n_y
    se = math.sqrt(vx + vy)
    if se == 0:
        return 0.0, float(n_x + n_y - 2)
    return se, (vx + vy) ** 2 / (vx**2 / (n_x - 1) + vy**2 / (n_y - 1))


def paired_mde(differences: ArrayLike, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """MDE of the paired t-test for these many pairs, the sd of the differences taken as true."""
    d = clean(differences)
    if d.size < 2:
        return NAN
    return minimum_detectable_effect(*_paired_design(_spread(d), d.size), confidence, power)


def welch_mde(x: ArrayLike, y: ArrayLike, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """MDE of Welch's test for these sample sizes, the observed sds taken as true."""
    x, y = clean(x), clean(y)
    if min(x.size, y.size) < 2:
        return NAN
    design = _welch_design(_spread(x), _spread(y), x.size, y.size)
    return minimum_detectable_effect(*design, confidence, power)


def _fewest_seeds(
    design: Callable[[int], tuple[float, float]], target: float, confidence: float, power: float
) -> int | None:
    """Smallest n in [2, MAX_SEEDS] whose (standard error, df) `design` gives `power` against `target`."""

    def detects(n: int) -> bool:
        se, df = design(n)
        return se == 0 or t_power(target, se, df, confidence) >= power

    if detects(2):
        return 2
    if not detects(MAX_SEEDS):
        return None
    low, high = 2, MAX_SEEDS
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if detects(middle) else (middle, high)
    return high


def paired_seeds_needed(
    differences: ArrayLike, target: float, confidence: float = CONFIDENCE, power: float = POWER
) -> int | None:
    """Fewest seed pairs whose paired MDE, at the observed sd of differences, is at most `target`."""
    d = clean(differences)
    if d.size < 2:
        return None
    sd = _spread(d)
    return _fewest_seeds(lambda n: _paired_design(sd, n), target, confidence, power)


def welch_seeds_needed(
    x: ArrayLike, y: ArrayLike, target: float, confidence: float = CONFIDENCE, power: float = POWER
) -> int | None:
    """Fewest seeds per variant (the same for both) whose Welch MDE at the observed sds is at most `target`."""
    x, y = clean(x), clean(y)
    if min(x.size, y.size) < 2:
        return None
    sd_x, sd_y = _spread(x), _spread(y)
    return _fewest_seeds(lambda n: _welch_design(sd_x, sd_y, n, n), target, confidence, power)


def pairable(seeds_x: Sequence[int | None] | None, seeds_y: Sequence[int | None] | None) -> bool:
    """Whether two variants ran exactly the same seeds, each once (so they can be compared seed by seed)."""
    if seeds_x is None or seeds_y is None or None in seeds_x or None in seeds_y:
        return False
    return len(set(seeds_x)) == len(seeds_x) and len(set(seeds_y)) == len(seeds_y) and set(seeds_x) == set(seeds_y)


def compare(
    x: ArrayLike,
    y: ArrayLike,
    variant: str,
    reference: str,
    seeds_x: Sequence[int | None] | None = None,
    seeds_y: Sequence[int | None] | None = None,
    target_effect: float = TARGET_EFFECT,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Comparison:
    """All statistics of X against Y (the analysis step, krpo_bench/analysis, judges and words them).

    Paired when `seeds_x` and `seeds_y` (the seed of each value of `x` and `y`) hold the same
    seeds, each once; otherwise unpaired (Welch).
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    welch, welch_p = mean_difference_ci(x, y, confidence), welch_p_value(x, y)
    analysis: Analysis
    if pairable(seeds_x, seeds_y) and len(seeds_x or ()) == x.size and len(seeds_y or ()) == y.size:
        row_of = {s: i for i, s in enumerate(seeds_y or ())}
        d = paired_differences(x, y[[row_of[s] for s in seeds_x or ()]])
        analysis, n_x, n_y = "paired", int(d.size), int(d.size)
        difference = mean_ci(d, confidence)
        bootstrap = mean_ci(d, confidence, "bootstrap", n_resamples, seed)
        poi = paired_win_share_exact(d, confidence).share
        p_value, rank_p = paired_p_value(d), signed_rank_p_value(d)
        mde, needed = paired_mde(d, confidence), paired_seeds_needed(d, target_effect, confidence)
    else:
        x, y = clean(x), clean(y)
        analysis, n_x, n_y = "unpaired", int(x.size), int(y.size)
        difference = welch
        bootstrap = difference_bootstrap_ci(x, y, confidence, n_resamples, seed)
        poi = probability_of_improvement(x, y, confidence, n_resamples, seed)
        p_value, rank_p = welch_p, rank_sum_p_value(x, y)
        mde, needed = welch_mde(x, y, confidence), welch_seeds_needed(x, y, target_effect, confidence)
    return Comparison(
        variant=variant,
        reference=reference,
        analysis=analysis,
        n_variant=n_x,
        n_reference=n_y,
        difference=difference,
        difference_bootstrap=bootstrap,
        prob_improvement=poi,
        p_value=p_value,
        rank_p_value=rank_p,
        welch_difference=welch,
        welch_p=welch_p,
        mde=mde,
        target_effect=target_effect,
        seeds_needed=needed,
        confidence=confidence,
    )


def default_reference(variants: Sequence[str]) -> str | None:
    """The variant others are compared with: ``grpo`` when present, else the first (None when empty)."""
    return "grpo" if "grpo" in variants else (variants[0] if variants else None)


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (statsmodels' `multipletests`, "holm").

    The k-th smallest of m p-values becomes max_{j <= k} min(1, (m - j + 1) p_(j)); rejecting the
    adjusted p-values below alpha controls the family-wise error at alpha under any dependence.
    NaN entries (comparisons that have no test) pass through as NaN and are not counted in m.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    adjusted = np.full(p.shape, NAN)
    tested = np.isfinite(p)
    if tested.any():
        adjusted[tested] = statsmodels.stats.multitest.multipletests(p[tested], method="holm")[1]
    return adjusted


@dataclass(frozen=True)
class Equivalence:
    """A TOST: `p_value` (the larger of the two one-sided p-values) and the (1 - 2 alpha) interval
    of the difference, which lies inside (-margin, +margin) exactly when p_value < alpha."""

    p_value: float
    interval: Interval
    margin: float


def _paired_samples(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples need the same number of seeds, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def tost(x: ArrayLike, y: ArrayLike, margin: float, paired: bool, confidence: float = CONFIDENCE) -> Equivalence:
    """Two one-sided tests of equivalence of X - Y within (-margin, +margin) at alpha = 1 - confidence.

    H0: |mean difference| >= margin against H1: |mean difference| < margin; p = max(p_low, p_high)
    of the one-sided t-tests of H0_low: diff <= -margin and H0_high: diff >= +margin (statsmodels
    `ttost_paired` on the seed pairs, or `ttost_ind(usevar="unequal")`: Welch). The interval is the
    matching (1 - 2 alpha) t-interval (90 % at alpha 5 %). Below two seeds (pairs) p and the bounds
    are NaN; constant differences (paired) or two constant samples use the test's limit: p = 0 when
    the difference lies strictly inside the margin, else 1.
    """
    inner = 1 - 2 * (1 - confidence)
    if paired:
        x, y = _paired_samples(x, y)
        d = paired_differences(x, y)
        interval, too_few, degenerate = mean_ci(d, inner), d.size < 2, _constant(d)
    else:
        x, y = clean(x), clean(y)
        interval = mean_difference_ci(x, y, inner)
        too_few, degenerate = min(x.size, y.size) < 2, _constant(x) and _constant(y)
    if too_few:
        return Equivalence(NAN, interval, margin)
    if degenerate or interval.width == 0:
        return Equivalence(0.0 if abs(interval.estimate) < margin else 1.0, interval, margin)
    if paired:
        p = statsmodels.stats.weightstats.ttost_paired(x, y, -margin, margin)[0]
    else:
        p = statsmodels.stats.weightstats.ttost_ind(x, y, -margin, margin, usevar="unequal")[0]
    return Equivalence(float(p), interval, margin)


def decide(
    difference_p: float,
    tost_p: float,
    alpha: float,
    estimate: float,
    interval: Interval,
    margin: float,
    tost_alpha: float | None = None,
) -> Decision:
    """The verdict of one comparison from its (possibly Holm-adjusted) p-values.

    "better"/"worse" when the difference test rejects (difference_p < alpha; the sign of
    `estimate`), else "equivalent" when the TOST within +-`margin` rejects (tost_p < alpha), else
    "undecided". A difference that is both significant and inside the margin reads as better/worse:
    its interval shows how small it is. Without a defined `interval` (one seed) or with NaN p-values
    nothing is decided. `tost_alpha` (default `alpha`) is the TOST's level where it differs (a
    group-sequential look's one-sided nominal level).
    """
    if margin <= 0:
        raise ValueError(f"the equivalence margin must be positive, got {margin}")
    if not interval.defined:
        return "undecided"
    if difference_p < alpha:
        return "better" if estimate > 0 else "worse"
    if tost_p < (alpha if tost_alpha is None else tost_alpha):
        return "equivalent"
    return "undecided"


def decision_probability(
    effect: float, standard_error: float, df: float, margin: float, confidence: float = CONFIDENCE
) -> float:
    """P(the two-sided t-test rejects or the TOST within +-margin rejects), both at alpha = 1 - confidence.

    With D ~ N(effect, se^2) and the estimated standard error se_hat = se * sqrt(U / df),
    U ~ chi2(df) independent of D, the difference test rejects when |D| > t_{1-alpha/2,df} se_hat
    and the TOST when |D| < margin - t_{1-alpha,df} se_hat; conditional on U the union has
    probability min(1, P(|D| > c1) + P(|D| < c2)), integrated over U numerically (exact for the
    paired t-test; for Welch the Satterthwaite df stands in for the distribution of se_hat).
    """
    if standard_error == 0:
        return 1.0
    alpha = 1 - confidence
    two_sided, one_sided = scipy.stats.t.ppf(1 - alpha / 2, df), scipy.stats.t.ppf(1 - alpha, df)
    phi = scipy.special.ndtr

    def given(quantile: float) -> float:
        se_hat = standard_error * math.sqrt(scipy.special.chdtri(df, 1 - quantile) / df)
        c1, c2 = two_sided * se_hat, margin - one_sided * se_hat
        outside = phi((-c1 - effect) / standard_error) + phi((effect - c1) / standard_error)
        inside = max(0.0, phi((c2 - effect) / standard_error) - phi((-c2 - effect) / standard_error))
        return min(1.0, outside + inside)

    return float(scipy.integrate.quad(given, 0.0, 1.0, epsabs=1e-10, limit=200)[0])


def _fewest_seeds_to_decide(
    design: Callable[[int], tuple[float, float]], effect: float, margin: float, confidence: float, power: float
) -> int | None:
    def decides(n: int) -> bool:
        return decision_probability(effect, *design(n), margin, confidence) >= power

    if decides(2):
        return 2
    low, high = 2, 4
    while not decides(high):  # doubling, then bisection: the probability grows with n
        if high >= MAX_SEEDS:
            return None
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if decides(middle) else (middle, high)
    return high


def paired_seeds_to_decide(
    differences: ArrayLike, margin: float, confidence: float = CONFIDENCE, power: float = POWER
) -> int | None:
    """Fewest seed pairs that decide (significant difference or equivalence within +-margin) with
    probability `power`, the observed mean and sd of the differences taken as true (see
    `decision_probability`); None below two pairs or beyond MAX_SEEDS."""
    d = clean(differences)
    if d.size < 2:
        return None
    sd = _spread(d)
    return _fewest_seeds_to_decide(lambda n: _paired_design(sd, n), float(np.mean(d)), margin, confidence, power)


def welch_seeds_to_decide(
    x: ArrayLike, y: ArrayLike, margin: float, confidence: float = CONFIDENCE, power: float = POWER
) -> int | None:
    """Fewest seeds per variant that decide with probability `power` (Welch's design at the
    observed means and sds, Satterthwaite df); None below two seeds a side or beyond MAX_SEEDS."""
    x, y = clean(x), clean(y)
    if min(x.size, y.size) < 2:
        return None
    sd_x, sd_y = _spread(x), _spread(y)
    effect = float(np.mean(x) - np.mean(y))
    return _fewest_seeds_to_decide(lambda n: _welch_design(sd_x, sd_y, n, n), effect, margin, confidence, power)


@dataclass(frozen=True)
class WinShare:
    """Share of decided seed pairs that X wins, with its exact interval; ties are left out of `pairs`."""

    share: Interval
    wins: int
    pairs: int
    ties: int


def paired_win_share_exact(differences: ArrayLike, confidence: float = CONFIDENCE) -> WinShare:
    """Share of seed pairs X wins (difference > 0) among the pairs that are not tied, with the exact
    Clopper-Pearson interval of scipy's `binomtest(...).proportion_ci(method="exact")`.

    Tied pairs (difference 0 after `paired_differences`' rounding) carry no information on who wins
    (the sign test's convention): they are dropped and counted in `ties`. 5 wins of 5 gives
    1.00 [0.48, 1.00] at 95 %; no untied pair gives NaN.
    """
    d = clean(differences)
    wins, pairs = int(np.sum(d > 0)), int(np.sum(d != 0))
    if pairs == 0:
        return WinShare(Interval(NAN, NAN, NAN), 0, 0, int(d.size))
    ci = scipy.stats.binomtest(wins, pairs).proportion_ci(confidence_level=confidence, method="exact")
    return WinShare(Interval(wins / pairs, float(ci.low), float(ci.high)), wins, pairs, int(d.size) - pairs)


def curve_auc(steps: ArrayLike, values: ArrayLike) -> float:
    """Mean of a training curve over its steps: the trapezoid area under (step, value) divided by the
    step span, sum_k (s_{k+1} - s_k)(v_k + v_{k+1}) / 2 / (s_last - s_first).

    Points with a NaN step or value are dropped and the rest sorted by step; one point gives its
    value, none gives NaN.
    """
    s, v = np.asarray(steps, dtype=float).ravel(), np.asarray(values, dtype=float).ravel()
    if s.shape != v.shape:
        raise ValueError(f"a curve needs as many values as steps, got {v.size} and {s.size}")
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if s.size == 0:
        return NAN
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    span = s[-1] - s[0]
    return float(np.mean(v)) if span == 0 else float(np.trapezoid(v, s) / span)


def spread_ratio(x: ArrayLike, y: ArrayLike, paired: bool, confidence: float = CONFIDENCE) -> Interval:
    """Ratio sd(X) / sd(Y) of the seed spreads with an interval; both assume normal per-seed scores.

    Unpaired: the F interval, sd ratio in sqrt([F / F_{1-a/2}(n_x-1, n_y-1), F / F_{a/2}(n_x-1, n_y-1)])
    with F = s_x^2 / s_y^2. Paired by seed (x, y in seed order): Pitman-Morgan, Var X = l^2 Var Y
    exactly when X + l Y and X - l Y are uncorrelated; inverting that correlation's t-test (n - 2 df)
    gives the variance ratio in F (K -+ sqrt(K^2 - 1)) with K = 1 + 2 (1 - r^2) t^2_{1-a/2,n-2} / (n - 2),
    r the correlation of X and Y. NaN bounds below 2 seeds (unpaired) or 3 pairs (paired) and when a
    spread is zero (NaN estimate when sd(Y) is zero).
    """
    if paired:
        x, y = _paired_samples(x, y)
    else:
        x, y = clean(x), clean(y)
    if min(x.size, y.size) < 2:
        return Interval(NAN, NAN, NAN)
    sd_x, sd_y = _spread(x), _spread(y)
    estimate = sd_x / sd_y if sd_y > 0 else NAN
    if sd_x == 0 or sd_y == 0 or (paired and x.size < 3):
        return Interval(estimate, NAN, NAN)
    f, alpha = estimate**2, 1 - confidence
    if paired:
        r = float(np.corrcoef(x, y)[0, 1])
        t = scipy.stats.t.ppf(1 - alpha / 2, x.size - 2)
        k = 1 + 2 * (1 - r**2) * t**2 / (x.size - 2)
        low, high = f * (k - math.sqrt(k**2 - 1)), f * (k + math.sqrt(k**2 - 1))
    else:
        dfs = (x.size - 1, y.size - 1)
        low, high = f / scipy.stats.f.ppf(1 - alpha / 2, *dfs), f / scipy.stats.f.ppf(alpha / 2, *dfs)
    return Interval(estimate, math.sqrt(low), math.sqrt(high))


def binomial_item_se(accuracy: float, n_items: int) -> float:
    """Standard error of an accuracy from `n_items` independent test items: sqrt(p (1 - p) / n)."""
    if n_items < 1 or not 0 <= accuracy <= 1:
        return NAN
    return math.sqrt(accuracy * (1 - accuracy) / n_items)


@dataclass(frozen=True)
class TwoLevelInterval:
    """Mean difference over seeds and test items with an interval covering both sources of noise;
    `item_share` is the test items' share of its variance (the rest is the seeds' and the
    seed x item interaction's), `df` the interval's Satterthwaite degrees of freedom."""

    difference: Interval
    item_share: float
    df: float


def _two_way_mean_squares(outcomes: np.ndarray) -> tuple[float, float]:
    """Row (seed) and residual mean squares of a two-way layout without replication."""
    n_rows, n_cols = outcomes.shape
    rows, cols, grand = outcomes.mean(axis=1), outcomes.mean(axis=0), outcomes.mean()
    residual = outcomes - rows[:, None] - cols[None, :] + grand
    ms_rows = n_cols * float(np.sum((rows - grand) ** 2)) / (n_rows - 1)
    return ms_rows, float(np.sum(residual**2)) / ((n_rows - 1) * (n_cols - 1))


def two_level_interval(
    outcomes_x: ArrayLike, outcomes_y: ArrayLike, paired: bool, confidence: float = CONFIDENCE
) -> TwoLevelInterval:
    """Difference of mean accuracy X - Y with a t-interval whose variance covers seeds and test items.

    `outcomes_x`, `outcomes_y`: [seeds x items] 0/1 outcomes on the same items in the same column
    order (paired by item); rows in the same seed order when `paired` (then the per-cell differences
    z = x - y are analysed as one arm). Crossed random-effects model per arm, outcome = mean + seed
    + item + seed x item; with R seeds, C items, MS_seed and MS_res the two-way ANOVA mean squares of
    an arm and s_g^2 the variance over items of the item-mean differences, the unbiased
    (method-of-moments) variance of the difference is
        V = sum_arms MS_seed / (R C)  +  max(0, s_g^2 - sum_arms MS_res / R) / C,
    the first term the seeds' (with the interaction), the second the items'; the interval is
    estimate -+ t_{1-a/2, df} sqrt(V) with the Satterthwaite df of that combination. (Owen's two-way
    "pigeonhole" bootstrap counts the interaction three times: at 5 seeds x 200 items it covered
    100 % for a nominal 95 %, hence moments.) NaN bounds below two seeds in an arm or two items.
    """
    x, y = np.asarray(outcomes_x, dtype=float), np.asarray(outcomes_y, dtype=float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"outcomes must be [seeds x items] on the same items, got {x.shape} and {y.shape}")
    if paired and x.shape != y.shape:
        raise ValueError(f"seed-paired outcomes need the same seeds, got {x.shape} and {y.shape}")
    estimate = float(np.mean(x) - np.mean(y)) if x.size and y.size else NAN
    n_items = x.shape[1]
    if min(x.shape[0], y.shape[0], n_items) < 2:
        return TwoLevelInterval(Interval(estimate, NAN, NAN), NAN, NAN)
    arms = [x - y] if paired else [x, y]
    gap = x.mean(axis=0) - y.mean(axis=0)
    seed_terms, residual_terms = [], []  # (variance term, its df)
    for arm in arms:
        n_seeds = arm.shape[0]
        ms_seeds, ms_residual = _two_way_mean_squares(arm)
        seed_terms.append((ms_seeds / (n_seeds * n_items), n_seeds - 1.0))
        residual_terms.append((ms_residual / (n_seeds * n_items), (n_seeds - 1.0) * (n_items - 1)))
    item_spread = (float(np.var(gap, ddof=1)) / n_items, n_items - 1.0)
    item_variance = item_spread[0] - sum(v for v, _ in residual_terms)
    terms = seed_terms + ([item_spread] + [(-v, df) for v, df in residual_terms] if item_variance > 0 else [])
    variance = sum(v for v, _ in terms)
    if variance == 0:
        return TwoLevelInterval(Interval(estimate, estimate, estimate), NAN, NAN)
    df = variance**2 / sum(v**2 / df for v, df in terms if v != 0)
    half = scipy.stats.t.ppf(1 - (1 - confidence) / 2, df) * math.sqrt(variance)
    share = max(item_variance, 0.0) / variance
    return TwoLevelInterval(Interval(estimate, estimate - half, estimate + half), share, float(df))
