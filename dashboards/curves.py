"""Aggregate step-indexed curves of one variant across its seeds."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from krpo_bench.stats import CONFIDENCE, N_BOOTSTRAP, SEED


@dataclass(frozen=True)
class Curve:
    """Per-step mean, IQM and 95 % bootstrap band of the mean, plus every seed's own series.

    `per_seed` is a steps x seeds frame (NaN where a seed did not log that step); the band is NaN
    at steps that fewer than two seeds reached.
    """

    metric: str
    steps: np.ndarray
    mean: np.ndarray
    iqm: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: np.ndarray
    per_seed: pd.DataFrame


def _band(block: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap band of the mean for each column of a complete seeds x steps block."""
    low = high = block.mean(axis=0)
    if block.shape[0] < 2:
        return np.full_like(low, np.nan), np.full_like(high, np.nan)
    varying = np.ptp(block, axis=0) > 0
    low, high = low.copy(), high.copy()
    if varying.any():
        result = scipy.stats.bootstrap(
            (block[:, varying],),
            np.mean,
            n_resamples=n_resamples,
            vectorized=True,
            axis=0,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low[varying] = result.confidence_interval.low
        high[varying] = result.confidence_interval.high
    return low, high


def aggregate_curve(
    series_by_seed: Mapping[Hashable, pd.Series],
    metric: str = "",
    confidence: float = CONFIDENCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = SEED,
) -> Curve:
    """Align seeds' step-indexed series on step and summarise each step across seeds."""
    frame = pd.DataFrame({key: s for key, s in series_by_seed.items() if len(s)}).sort_index()
    values = frame.to_numpy(dtype=float).T
    present = np.isfinite(values)
    mean = np.full(values.shape[1], np.nan)
    iqm, low, high = mean.copy(), mean.copy(), mean.copy()
    if values.size:
        patterns, group = np.unique(present, axis=1, return_inverse=True)
        for index, rows in enumerate(patterns.T):
            columns = np.flatnonzero(group.ravel() == index)
            if not rows.any():
                continue
            block = values[np.ix_(rows, columns)]
            mean[columns] = block.mean(axis=0)
            iqm[columns] = scipy.stats.trim_mean(block, 0.25, axis=0)
            low[columns], high[columns] = _band(block, confidence, n_resamples, seed)
    return Curve(
        metric=metric,
        steps=frame.index.to_numpy(),
        mean=mean,
        iqm=iqm,
        low=low,
        high=high,
        n_seeds=present.sum(axis=0),
        per_seed=frame,
    )
