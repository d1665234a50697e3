"""The analysis step: trial records -> `StudyAnalysis` (the one place results are computed).

Trials are grouped by (variant, grid point). Each group is compared with the reference variant at
the same grid point, so that only the variant differs; groups are read in seed order.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from krpo_bench import stats
from krpo_bench.analysis.format import verdict_sentence
from krpo_bench.analysis.looks import ComparisonDesign, designs, fixed_design, look_design, next_designs
from krpo_bench.analysis.model import ComparisonResult, GridPoint, StudyAnalysis, VariantResult
from krpo_bench.analysis.records import TrialRecord

METRIC = "final/accuracy"
INITIAL_METRIC = "final/initial_accuracy"
SECONDARY_METRICS = ("final/pass_at_k", "final/train_reward_auc")
"""Endpoints compared besides the primary one, each labelled exploratory (no multiplicity control)."""


class AnalysisSettings(BaseModel):
    """What the analysis compares and how: the reference variant (None: no comparisons), the primary
    metric and the exploratory ones, the effect worth detecting and the equivalence margin, the
    interval level, the bootstrap's resamples and seed, and for a sequential study its planned looks
    (seeds per comparison at each), its seed order and the looks taken so far."""

    model_config = ConfigDict(frozen=True)

    reference: str | None = "grpo"
    metric: str = METRIC
    secondary_metrics: tuple[str, ...] = SECONDARY_METRICS
    target_effect: float = Field(stats.TARGET_EFFECT, gt=0)
    equivalence_margin: float | None = Field(None, gt=0)
    confidence: float = Field(stats.CONFIDENCE, gt=0, lt=1)
    n_resamples: int = Field(stats.N_BOOTSTRAP, ge=1)
    seed: int = stats.SEED
    look_sizes: tuple[int, ...] = ()
    seed_order: tuple[int, ...] = ()
    looks: tuple[dict[str, Any], ...] = ()
    next_look: bool = False
    """Analyse the look about to be taken (the service, when a batch ended) rather than the looks stored."""

    @property
    def margin(self) -> float:
        """The equivalence margin in effect (default: the target effect)."""
        return self.equivalence_margin if self.equivalence_margin is not None else self.target_effect

    @property
    def alpha(self) -> float:
        """The tests' level, 1 - confidence."""
        return 1 - self.confidence

    @property
    def sequential(self) -> bool:
        """Whether seeds are added until decided (more than one planned look)."""
        return len(self.look_sizes) > 1

    @classmethod
    def of_spec(cls, spec: Any, looks: Sequence[dict[str, Any]] | None = None, **overrides: Any) -> AnalysisSettings:
        """Settings of a stored study spec: an ablation's reference (``grpo``, else its first variant),
        its ``analysis`` block (primary endpoint, target effect, margin, sequential looks) and the
        looks stored so far; a search or probe compares nothing."""
        ablation = getattr(spec, "kind", None) == "ablation"
        reference = stats.default_reference(list(spec.variants or {"base": {}})) if ablation else None
        fields: dict[str, Any] = {"reference": reference}
        analysis = getattr(spec, "analysis", None)
        if analysis is not None:
            fields |= {
                "metric": analysis.primary,
                "target_effect": analysis.target_effect,
                "equivalence_margin": analysis.equivalence_margin,
                "secondary_metrics": tuple(m for m in SECONDARY_METRICS if m != analysis.primary),
            }
            if ablation and analysis.until_decided is not None:
                sizes = spec.look_sizes()
                fields |= {
                    "look_sizes": tuple(sizes),
                    "seed_order": tuple(spec.seeds_through(sizes[-1])),
                    "looks": tuple(looks or ()),
                }
        return cls(**(fields | overrides))


@dataclasses.dataclass
class _Group:
    variant: str
    grid_point: GridPoint
    label: str
    records: list[TrialRecord]

    def scored(self, metric: str) -> list[TrialRecord]:
        """The records with a finite value of ``metric``, in seed order (no seed last)."""
        kept = [r for r in self.records if math.isfinite(r.metrics.get(metric, math.nan))]
        return sorted(kept, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))


def _key(variant: str, grid_point: GridPoint) -> str:
    return json.dumps([variant, grid_point], sort_keys=True, default=str)


def _groups(records: Sequence[TrialRecord], reference: str | None) -> dict[str, _Group]:
    """Groups by (variant, grid point): the reference variant's first, then in first-seen order."""
    groups: dict[str, _Group] = {}
    for record in records:
        key = _key(record.variant, record.grid_point)
        groups.setdefault(key, _Group(record.variant, record.grid_point, record.label, [])).records.append(record)
    return dict(sorted(groups.items(), key=lambda item: item[1].variant != reference))


def _variant_result(group: _Group, settings: AnalysisSettings) -> VariantResult:
    scored = group.scored(settings.metric)
    values = [r.metrics[settings.metric] for r in scored]
    before = [r.metrics[INITIAL_METRIC] for r in scored if math.isfinite(r.metrics.get(INITIAL_METRIC, math.nan))]
    return VariantResult(
        variant=group.variant,
        grid_point=group.grid_point,
        label=group.label,
        n=len(values),
        seeds=[r.seed for r in scored],
        values=values,
        mean=stats.mean_ci(values, settings.confidence),
        iqm=stats.iqm_ci(values, settings.confidence, settings.n_resamples, settings.seed),
        initial_mean=sum(before) / len(before) if before else math.nan,
    )


def _aligned(group: _Group, metric: str, design: ComparisonDesign) -> list[TrialRecord]:
    """The group's scored records in seed order, cut to the design's first seeds of a sequential study."""
    scored = group.scored(metric)
    if design.seeds is None:
        return scored
    return [r for r in scored if r.seed in design.allowed]


def _item_outcomes(x: list[TrialRecord], y: list[TrialRecord]) -> tuple[np.ndarray, np.ndarray] | None:
    """[seeds x items] outcomes of both arms when every trial stored them, on equally many items."""
    rows = [r.item_outcomes for r in x + y]
    if not x or not y or any(o is None for o in rows) or len({len(o) for o in rows}) != 1:
        return None
    return (np.array([r.item_outcomes for r in x], dtype=float), np.array([r.item_outcomes for r in y], dtype=float))


def _comparison(
    group: _Group,
    versus: _Group,
    settings: AnalysisSettings,
    metric: str,
    design: ComparisonDesign,
    exploratory: bool,
) -> dict[str, Any]:
    """Every statistic of one comparison except those of its family (Holm, verdict, sentence)."""
    x, y = _aligned(group, metric, design), _aligned(versus, metric, design)
    xv, yv = [r.metrics[metric] for r in x], [r.metrics[metric] for r in y]
    compared = stats.compare(
        xv,
        yv,
        group.label,
        versus.label,
        [r.seed for r in x],
        [r.seed for r in y],
        settings.target_effect,
        settings.confidence,
        settings.n_resamples,
        settings.seed,
    )
    paired = compared.analysis == "paired"
    equivalence = stats.tost(xv, yv, settings.margin, paired, settings.confidence)
    if paired:
        to_decide = stats.paired_seeds_to_decide(stats.paired_differences(xv, yv), settings.margin, settings.confidence)
    else:
        to_decide = stats.welch_seeds_to_decide(xv, yv, settings.margin, settings.confidence)
    outcomes = _item_outcomes(x, y) if metric == METRIC else None
    items = stats.two_level_interval(*outcomes, paired, settings.confidence) if outcomes is not None else None
    statistics = {f.name: getattr(compared, f.name) for f in dataclasses.fields(compared)}
    return statistics | {
        "variant": group.variant,
        "grid_point": group.grid_point,
        "label": group.label,
        "reference": versus.variant,
        "reference_grid_point": versus.grid_point,
        "reference_label": versus.label,
        "metric": metric,
        "margin": settings.margin,
        "tost_p": equivalence.p_value,
        "tost_interval": equivalence.interval,
        "exploratory": exploratory,
        "look": design.look,
        "difference_level": design.difference_level,
        "tost_level": design.tost_level,
        "seeds_to_decide": to_decide,
        "item_difference": items.difference if items is not None else stats.Interval(math.nan, math.nan, math.nan),
        "item_share": items.item_share if items is not None else math.nan,
        "spread_ratio": (spread := stats.spread_ratio(xv, yv, paired, settings.confidence)),
        "stability": "more stable" if spread.high < 1 else "less stable" if spread.low > 1 else "undecided",
    }


def _judged(rows: list[dict[str, Any]], family: bool) -> list[ComparisonResult]:
    """The comparisons with their family's Holm-adjusted p-values (exploratory ones: none), verdicts
    and sentences."""
    size = len(rows) if family else 0
    p_holm = stats.holm([r["p_value"] for r in rows]) if family else [math.nan] * len(rows)
    tost_holm = stats.holm([r["tost_p"] for r in rows]) if family else [math.nan] * len(rows)
    results = []
    for row, p, tost_p in zip(rows, p_holm, tost_holm):
        decisive_p, decisive_tost = (p, tost_p) if family else (row["p_value"], row["tost_p"])
        verdict = stats.decide(
            decisive_p,
            decisive_tost,
            row["difference_level"],
            row["difference"].estimate,
            row["difference"],
            row["margin"],
            tost_alpha=row["tost_level"],
        )
        if verdict != "undecided":
            row = row | {"seeds_to_decide": None}
        judged = row | {"family_size": size, "p_holm": float(p), "tost_p_holm": float(tost_p), "verdict": verdict}
        results.append(ComparisonResult.model_validate(judged | {"sentence": verdict_sentence(judged)}))
    return results


def _sequential_designs(settings: AnalysisSettings, labels: list[str]) -> dict[str, ComparisonDesign]:
    """Each comparison's design in a sequential study: at the look being taken (``next_look``), else as
    the stored looks left it (before the first look: on the first look's seeds), so a batch in flight
    never mixes into what is shown."""
    if settings.next_look:
        return next_designs(settings.looks, settings.look_sizes, settings.alpha, labels, settings.seed_order)
    first = look_design(1, settings.look_sizes, settings.alpha, settings.seed_order)
    return {label: first for label in labels} | designs(
        settings.looks, settings.look_sizes, settings.alpha, settings.seed_order
    )


def _exploratory(design: ComparisonDesign, alpha: float) -> ComparisonDesign:
    """An exploratory comparison on the same seeds as its primary one, at level alpha."""
    return dataclasses.replace(design, look=None, difference_level=alpha, tost_level=alpha)


def analyze(
    records: Sequence[TrialRecord], settings: AnalysisSettings, order_pairs: Sequence[tuple[str, str]] = ()
) -> StudyAnalysis:
    """Per (variant, grid point): the metric's values by seed, mean and IQM with intervals; each
    group against the reference variant at its grid point (paired by seed where the seed sets match),
    on the primary metric as one Holm family with verdicts, and on each secondary metric as
    exploratory comparisons; each ``(shuffled label, twin label)`` of ``order_pairs`` compared the
    same way (exploratory). A sequential study's comparisons use the seeds and levels of their looks."""
    groups = _groups(records, settings.reference)
    by_label = {g.label: g for g in groups.values()}
    pairs = (
        [
            (group, groups[versus])
            for group in groups.values()
            if group.variant != settings.reference and (versus := _key(settings.reference, group.grid_point)) in groups
        ]
        if settings.reference is not None
        else []
    )
    fixed = fixed_design(settings.alpha)
    planned = _sequential_designs(settings, [g.label for g, _ in pairs]) if settings.sequential else {}
    primary = [_comparison(g, v, settings, settings.metric, planned.get(g.label, fixed), False) for g, v in pairs]
    secondary = [
        comparison
        for metric in settings.secondary_metrics
        for comparison in _judged(
            [
                _comparison(g, v, settings, metric, _exploratory(planned.get(g.label, fixed), settings.alpha), True)
                for g, v in pairs
                if g.scored(metric) and v.scored(metric)
            ],
            family=False,
        )
    ]
    order = _judged(
        [
            _comparison(by_label[s], by_label[t], settings, settings.metric, fixed, True)
            for s, t in order_pairs
            if s in by_label and t in by_label
        ],
        family=False,
    )
    return StudyAnalysis(
        metric=settings.metric,
        reference=settings.reference,
        confidence=settings.confidence,
        power=stats.POWER,
        target_effect=settings.target_effect,
        margin=settings.margin,
        n_bootstrap=settings.n_resamples,
        bootstrap_seed=settings.seed,
        variants=[_variant_result(g, settings) for g in groups.values()],
        comparisons=_judged(primary, family=True),
        secondary=secondary,
        order_checks=order,
        looks=list(settings.looks),
    )
