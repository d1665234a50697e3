"""Statistics for comparing variants over seeds: thin wrappers over scipy and rliable.

Every function takes plain 1-D arrays of per-seed scores (NaNs are dropped), never warns, and
returns NaN bounds where a sample is too small for an interval (a single seed). Bootstrap intervals
are percentile intervals from `scipy.stats.bootstrap` with a fixed seed, so a report is reproducible.
Resampling each sample on its own is rliable's stratified bootstrap for one task; rliable's own
`library` module is not used because its `arch` dependency fails to import next to pandas 3.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
from rliable import metrics as rly

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000
SEED = 0
NAN = float("nan")

ArrayLike = Sequence[float] | np.ndarray


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

    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of zero."""
        return self.defined and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class Comparison:
    """Variant X against reference Y on one per-seed score."""

    variant: str
    reference: str
    n_variant: int
    n_reference: int
    difference: Interval
    prob_improvement: Interval
    welch_p: float
    sentence: str


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
    """Interquartile mean (rliable's `aggregate_iqm`) with a stratified-bootstrap interval."""
    x = clean(values)
    if x.size == 0:
        return Interval(NAN, NAN, NAN)
    iqm = float(rly.aggregate_iqm(x[:, None]))
    if x.size == 1:
        return Interval(iqm, NAN, NAN)
    if _constant(x):
        return Interval(iqm, iqm, iqm)
    return Interval(iqm, *_bootstrap((x,), _trimmed_mean, confidence, n_resamples, seed))


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
    """P(X > Y) (rliable's `probability_of_improvement`, ties count one half) with a bootstrap CI."""
    x, y = clean(x), clean(y)
    if x.size == 0 or y.size == 0:
        return Interval(NAN, NAN, NAN)
    poi = float(rly.probability_of_improvement(x[:, None], y[:, None]))
    if min(x.size, y.size) < 2:
        return Interval(poi, NAN, NAN)
    if _constant(x) and _constant(y):
        return Interval(poi, poi, poi)
    return Interval(poi, *_bootstrap((x, y), _poi_statistic, confidence, n_resamples, seed))


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
    confidence: float = CONFIDENCE,
    scale: float = 100.0,
    unit: str = "points",
) -> str:
    """One plain sentence saying whether `variant` beats, trails or ties `reference`."""
    if n_variant == 0 or n_reference == 0:
        missing = variant if n_variant == 0 else reference
        return f"cannot compare {variant} with {reference}: no finished seeds of {missing}"
    level = f"{confidence * 100:g} %"
    point = f"{_points(difference.estimate, scale)} {unit}"
    if not difference.defined:
        single = [name for name, n in ((variant, n_variant), (reference, n_reference)) if n < 2]
        return (
            f"cannot tell whether {variant} beats {reference}: only one seed of "
            f"{' and '.join(single)}, so no confidence interval (difference {point})"
        )
    bounds = f"{level} CI [{_points(difference.low, scale)}, {_points(difference.high, scale)}]"
    if difference.low > 0:
        return f"{variant} beats {reference} by {point}, {bounds}"
    if difference.high < 0:
        size = f"{abs(difference.estimate) * scale:.1f} {unit}"
        return f"{variant} trails {reference} by {size} (difference {point}, {bounds})"
    return (
        f"no detectable difference between {variant} and {reference} with "
        f"{_seeds_phrase(n_variant, n_reference)} (difference {point}, {bounds})"
    )


def compare(
    x: ArrayLike,
    y: ArrayLike,
    variant: str,
    reference: str,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
    scale: float = 100.0,
    unit: str = "points",
) -> Comparison:
    """All statistics of X against Y plus the verdict sentence."""
    x, y = clean(x), clean(y)
    difference = mean_difference_ci(x, y, confidence)
    return Comparison(
        variant=variant,
        reference=reference,
        n_variant=int(x.size),
        n_reference=int(y.size),
        difference=difference,
        prob_improvement=probability_of_improvement(x, y, confidence, n_resamples, seed),
        welch_p=welch_p_value(x, y),
        sentence=verdict(variant, reference, difference, x.size, y.size, confidence, scale, unit),
    )
