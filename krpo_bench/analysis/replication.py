"""A confirmation's analysis (``krpo-bench confirm``): alone, pooled with its original, and the
heterogeneity between the two.

The confirmation alone is the pre-declared test: the normal `analyze` of its own trials. Pooled, the
trials of both studies of the arms the confirmation re-ran are analysed as one study (their seeds are
distinct, so pairing by seed still holds). Heterogeneity asks whether the two studies estimate the
same difference: Cochran's Q on the two estimates (Q = z^2 for two), with I^2, and a small-sample
version of the same test (the estimates' standard errors come from 5-odd seeds each, so the normal
reference understates the tails: a t reference with Welch-Satterthwaite degrees of freedom).

The standard errors are the seed-level ones (paired by seed where the comparison is paired). Both
studies score every arm on the same test items, so the item-sampling error is common to the two
estimates and cancels from their difference: only the seed (training) noise can make them differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from krpo_bench import stats
from krpo_bench.analysis.analyze import AnalysisSettings, analyze
from krpo_bench.analysis.model import ComparisonResult, Frozen, GridPoint, Number, StudyAnalysis
from krpo_bench.analysis.records import TrialRecord


@dataclass(frozen=True)
class SeedEstimate:
    """A difference, its seed-level standard error and the degrees of freedom of that error."""

    difference: float
    se: float
    df: float


@dataclass(frozen=True)
class HeterogeneityTest:
    """Cochran's Q for two estimates (1 degree of freedom), its p-value, I^2 (the share of the
    spread beyond chance, 0 when Q <= 1) and the small-sample p-value (t, Welch-Satterthwaite df)."""

    q: float
    p_value: float
    i_squared: float
    small_sample_p: float


class Heterogeneity(Frozen):
    """One comparison (a variant against the reference at a grid point) in the original and in the
    confirmation: each difference with its seed-level standard error, and the test of their equality."""

    variant: str
    grid_point: GridPoint = ()
    label: str
    reference_label: str
    original_difference: Number
    original_se: Number
    confirmation_difference: Number
    confirmation_se: Number
    q: Number
    p_value: Number
    i_squared: Number
    small_sample_p: Number


class Replication(Frozen):
    """A confirmation's analysis: alone (the pre-declared test), the original alone, both pooled, and
    the heterogeneity of each comparison between the two studies."""

    original_id: str
    confirmation_id: str
    confirmation: StudyAnalysis
    original: StudyAnalysis
    pooled: StudyAnalysis
    heterogeneity: list[Heterogeneity]


def seed_estimate(analysis: StudyAnalysis, comparison: ComparisonResult) -> SeedEstimate:
    """The comparison's difference in mean with its seed-level standard error, from the seeds' values:
    paired (the mean of the per-seed differences, n - 1 df) where the comparison is paired, else
    Welch's (Welch-Satterthwaite df). NaN where fewer than two seeds make it undefined."""
    variant = next(v for v in analysis.variants if v.label == comparison.label)
    reference = next(v for v in analysis.variants if v.label == comparison.reference_label)
    x, y = np.asarray(variant.values, dtype=float), np.asarray(reference.values, dtype=float)
    if comparison.analysis == "paired":
        row_of = {seed: i for i, seed in enumerate(reference.seeds)}
        d = stats.paired_differences(x, y[[row_of[seed] for seed in variant.seeds]])
        if d.size < 2:
            return SeedEstimate(math.nan, math.nan, math.nan)
        return SeedEstimate(float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), d.size - 1.0)
    if x.size < 2 or y.size < 2:
        return SeedEstimate(math.nan, math.nan, math.nan)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1)) if vx + vy > 0 else math.inf
    return SeedEstimate(float(x.mean() - y.mean()), math.sqrt(vx + vy), float(df))


def heterogeneity_test(first: SeedEstimate, second: SeedEstimate) -> HeterogeneityTest:
    """Whether two independent estimates of one difference disagree beyond their errors.

    Cochran's Q = sum of w_i (d_i - d_w)^2 with w_i = 1 / se_i^2 and d_w the weighted mean, which for
    two estimates is z^2 with z = (d_1 - d_2) / sqrt(se_1^2 + se_2^2); p from chi^2 with 1 df;
    I^2 = max(0, (Q - 1) / Q). The small-sample p refers the same z to a t distribution with the
    Welch-Satterthwaite df of se_1^2 + se_2^2. NaN where an error is undefined or both are zero.
    """
    variance = first.se**2 + second.se**2
    if not (math.isfinite(variance) and variance > 0):
        return HeterogeneityTest(math.nan, math.nan, math.nan, math.nan)
    z = (first.difference - second.difference) / math.sqrt(variance)
    q = z**2
    df = variance**2 / (first.se**4 / first.df + second.se**4 / second.df)
    return HeterogeneityTest(
        q=q,
        p_value=float(scipy_stats.chi2.sf(q, 1)),
        i_squared=max(0.0, (q - 1) / q) if q > 0 else 0.0,
        small_sample_p=float(2 * scipy_stats.t.sf(abs(z), df)),
    )


def _key(comparison: ComparisonResult) -> tuple[str, str]:
    return comparison.variant, repr(comparison.grid_point)


def heterogeneity(original: StudyAnalysis, confirmation: StudyAnalysis) -> list[Heterogeneity]:
    """For each comparison of the confirmation that the original made too (same variant and grid
    point), both differences and the test of their equality."""
    made = {_key(c): c for c in original.comparisons}
    rows = []
    for compared in confirmation.comparisons:
        before = made.get(_key(compared))
        if before is None:
            continue
        first, second = seed_estimate(original, before), seed_estimate(confirmation, compared)
        test = heterogeneity_test(first, second)
        rows.append(
            Heterogeneity(
                variant=compared.variant,
                grid_point=compared.grid_point,
                label=compared.label,
                reference_label=compared.reference_label,
                original_difference=first.difference,
                original_se=first.se,
                confirmation_difference=second.difference,
                confirmation_se=second.se,
                q=test.q,
                p_value=test.p_value,
                i_squared=test.i_squared,
                small_sample_p=test.small_sample_p,
            )
        )
    return rows


def replicate(
    original_id: str,
    original: Sequence[TrialRecord],
    original_settings: AnalysisSettings,
    confirmation_id: str,
    confirmation: Sequence[TrialRecord],
    settings: AnalysisSettings,
) -> Replication:
    """The replication of study ``original_id`` by ``confirmation_id`` from their trial records: the
    confirmation alone and the two pooled over the arms (variant, grid point) the confirmation ran,
    with the confirmation's ``settings`` (one fixed test: no sequential looks); the original alone
    with its own; and the heterogeneity of each comparison."""
    arms = {(r.variant, repr(r.grid_point)) for r in confirmation}
    kept = [r for r in original if (r.variant, repr(r.grid_point)) in arms]
    alone, before = analyze(confirmation, settings), analyze(original, original_settings)
    return Replication(
        original_id=original_id,
        confirmation_id=confirmation_id,
        confirmation=alone,
        original=before,
        pooled=analyze([*kept, *confirmation], settings),
        heterogeneity=heterogeneity(before, alone),
    )
