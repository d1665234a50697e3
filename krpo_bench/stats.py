"""Statistics for comparing variants over seeds: intervals, tests, power (pure numpy/scipy, no I/O).

Every function takes plain 1-D arrays of per-seed scores (NaNs are dropped), never warns, and returns
NaN bounds where a sample is too small for an interval (a single seed). Bootstrap intervals are
percentile intervals from `scipy.stats.bootstrap` with a fixed seed, so a report is reproducible;
resampling each sample on its own is rliable's stratified bootstrap for one task.

Two variants that ran the same seeds (an ablation: same seed, same warm start, data order and
sampling stream) are compared seed by seed ("paired"): the mean of the per-seed differences with a
t-interval and a bootstrap interval over the pairs, the paired t-test, the Wilcoxon signed-rank test
and the share of pairs the variant wins. Variants whose seed sets differ are compared as independent
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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.optimize
import scipy.stats

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
    sentence: str

    def flat(self) -> dict[str, str | float | int | None]:
        """The comparison as one flat row: the field names of the report's CSV/JSON and the API."""
        return {
            "reference": self.reference, "analysis": self.analysis,
            "n_variant": self.n_variant, "n_reference": self.n_reference,
            "diff": self.difference.estimate, "diff_ci_low": self.difference.low, "diff_ci_high": self.difference.high,
            "diff_boot_ci_low": self.difference_bootstrap.low, "diff_boot_ci_high": self.difference_bootstrap.high,
            "prob_improvement": self.prob_improvement.estimate,
            "prob_improvement_ci_low": self.prob_improvement.low,
            "prob_improvement_ci_high": self.prob_improvement.high,
            "p_value": self.p_value, "rank_p_value": self.rank_p_value,
            "welch_diff": self.welch_difference.estimate, "welch_ci_low": self.welch_difference.low,
            "welch_ci_high": self.welch_difference.high, "welch_p": self.welch_p,
            "mde": self.mde, "target_effect": self.target_effect, "seeds_needed": self.seeds_needed,
            "sentence": self.sentence,
        }


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


def _pair_wins(d: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0)), axis=axis)


def paired_probability_of_improvement(
    differences: ArrayLike,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Interval:
    """Share of seed pairs where X beats Y (ties count one half) with a bootstrap CI over pairs."""
    d = clean(differences)
    if d.size == 0:
        return Interval(NAN, NAN, NAN)
    degenerate = np.unique(np.sign(d)).size == 1
    return _bootstrapped(float(_pair_wins(d)), (d,), _pair_wins, degenerate, confidence, n_resamples, seed)


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


def _fewest_seeds(design: Callable[[int], tuple[float, float]], target: float, confidence: float, power: float) -> int | None:
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


def _points(value: float, scale: float) -> str:
    return f"{value * scale:+.1f}"


def _seeds_phrase(n_x: int, n_y: int) -> str:
    return f"{n_x} seeds" if n_x == n_y else f"{n_x} and {n_y} seeds"


def verdict(
    variant: str,
    reference: str,
    difference: Interval,
    n_variant: int,
    n_reference: int,
    analysis: Analysis = "unpaired",
    mde: float = NAN,
    target_effect: float = TARGET_EFFECT,
    seeds_needed: int | None = None,
    confidence: float = CONFIDENCE,
    scale: float = 100.0,
    unit: str = "points",
) -> str:
    """One plain sentence: whether `variant` beats, trails or ties `reference`, by which analysis,
    and what this many seeds can detect."""
    if n_variant == 0 or n_reference == 0:
        missing = variant if n_variant == 0 else reference
        return f"cannot compare {variant} with {reference}: no finished seeds of {missing}"
    point = f"{_points(difference.estimate, scale)} {unit}"
    if not difference.defined:
        single = [name for name, n in ((variant, n_variant), (reference, n_reference)) if n < 2]
        return (
            f"cannot tell whether {variant} beats {reference}: only one seed of "
            f"{' and '.join(single)}, so no confidence interval (difference {point})"
        )
    seeds = _seeds_phrase(n_variant, n_reference)
    how = "paired by seed" if analysis == "paired" else "unpaired, Welch"
    bounds = f"{confidence * 100:g} % CI [{_points(difference.low, scale)}, {_points(difference.high, scale)}]"
    detail = f"({how}, {seeds}: {point}, {bounds})"
    size = f"{abs(difference.estimate) * scale:.1f} {unit}"
    if difference.low > 0:
        head = f"{variant} beats {reference} by {size} {detail}"
    elif difference.high < 0:
        head = f"{variant} trails {reference} by {size} {detail}"
    else:
        head = f"no detectable difference between {variant} and {reference} {detail}"
    if not math.isfinite(mde):
        return head
    target = f"{target_effect * scale:g} {unit}"
    per_variant = "" if analysis == "paired" else " per variant"
    needed = (
        f"about {seeds_needed} seeds{per_variant} would detect {target}" if seeds_needed is not None
        else f"no feasible number of seeds would detect {target}"
    )
    return f"{head}; with {seeds} this study can only detect differences above {mde * scale:.1f} {unit}; {needed}"


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
    scale: float = 100.0,
    unit: str = "points",
) -> Comparison:
    """All statistics of X against Y plus the verdict sentence.

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
        poi = paired_probability_of_improvement(d, confidence, n_resamples, seed)
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
    sentence = verdict(
        variant, reference, difference, n_x, n_y, analysis, mde, target_effect, needed, confidence, scale, unit
    )
    return Comparison(
        variant=variant, reference=reference, analysis=analysis, n_variant=n_x, n_reference=n_y,
        difference=difference, difference_bootstrap=bootstrap, prob_improvement=poi, p_value=p_value,
        rank_p_value=rank_p, welch_difference=welch, welch_p=welch_p, mde=mde, target_effect=target_effect,
        seeds_needed=needed, confidence=confidence, sentence=sentence,
    )


def default_reference(variants: Sequence[str]) -> str | None:
    """The variant others are compared with: ``grpo`` when present, else the first (None when empty)."""
    return "grpo" if "grpo" in variants else (variants[0] if variants else None)

