"""The typed analysis of a study: per variant (and grid point), per comparison, per order check.

Every consumer renders this model: the API returns it, summary.json is its JSON dump, summary.csv its
`rows()`, the CLI table and the HTML report format its fields. A new statistic is one field of
`ComparisonResult` (plus its computation in analyze.py); its columns and JSON keys follow.
NaN stays NaN in Python and reads null in JSON (the `Number` type below, the one place that decides).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, computed_field

GridPoint = tuple[tuple[str, Any], ...]
"""(dotted path, value) pairs of a grid point, in the spec's grid order; empty without a grid."""


def finite_or_none(value: float | None) -> float | None:
    """A JSON number: None for NaN, infinities and None."""
    return float(value) if value is not None and math.isfinite(value) else None


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively (for json.dumps outside the model)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    return value


def _nan_for_none(value: Any) -> Any:
    return math.nan if value is None else value


Number = Annotated[
    float,
    BeforeValidator(_nan_for_none),
    PlainSerializer(finite_or_none, return_type=float | None, when_used="json"),
]
"""A float that may be NaN (undefined); null in JSON, and null reads back as NaN."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class Estimate(Frozen):
    """A point estimate and its confidence interval (NaN where undefined)."""

    estimate: Number
    low: Number
    high: Number

    @property
    def defined(self) -> bool:
        """Whether both bounds are finite."""
        return math.isfinite(self.low) and math.isfinite(self.high)


class VariantResult(Frozen):
    """One variant at one grid point: its seeds' values of the metric, their mean and IQM with intervals,
    and the mean of the metric before training over the trials that measured it."""

    variant: str
    grid_point: GridPoint = ()
    label: str
    n: int
    seeds: list[int | None]
    values: list[float]
    mean: Estimate
    iqm: Estimate
    initial_mean: Number


class ComparisonResult(Frozen):
    """A variant against its reference (the reference variant at the same grid point) on `metric`.

    Every statistic of `stats.Comparison` (see there): paired by seed where both ran the same seeds,
    else Welch; `mde` the difference these seeds detect, `seeds_needed` the seeds that would detect
    `target_effect`. Then the verdict: `tost_p` tests equivalence within +-`margin` (its
    `tost_interval` is the 1 - 2 alpha interval); `p_holm`/`tost_p_holm` are Holm-adjusted over the
    `family_size` comparisons of the primary endpoint (secondary endpoints are `exploratory` and
    keep their raw p-values there); `verdict` reads them at `difference_level` / `tost_level` (alpha,
    or a sequential look's nominal levels, `look`), and `seeds_to_decide` says about how many seeds
    would settle an undecided one. `difference` covers the seeds' noise on the test items the arms
    shared; `item_difference` (where every trial stored its per-item outcomes) covers the test
    items' noise too (`item_share` of its variance). `spread_ratio` is sd(variant) / sd(reference)
    of the per-seed values with its interval, and `stability` its verdict (exploratory: its interval
    below 1 reads more stable, above 1 less stable).
    """

    variant: str
    grid_point: GridPoint = ()
    label: str
    reference: str
    reference_grid_point: GridPoint = ()
    reference_label: str
    metric: str
    analysis: Literal["paired", "unpaired"]
    n_variant: int
    n_reference: int
    difference: Estimate
    difference_bootstrap: Estimate
    prob_improvement: Estimate
    p_value: Number
    rank_p_value: Number
    welch_difference: Estimate
    welch_p: Number
    mde: Number
    target_effect: float
    seeds_needed: int | None
    confidence: float
    margin: float
    tost_p: Number
    tost_interval: Estimate
    exploratory: bool
    family_size: int
    p_holm: Number
    tost_p_holm: Number
    look: int | None
    difference_level: float
    tost_level: float
    verdict: Literal["better", "worse", "equivalent", "undecided"]
    seeds_to_decide: int | None
    item_difference: Estimate
    item_share: Number
    spread_ratio: Estimate
    stability: Literal["more stable", "less stable", "undecided"]
    sentence: str


SHARED = ("variant", "grid_point", "label")
"""Fields a variant's row takes from the variant, not again from its comparison."""


def _flat(model: Frozen, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A model's fields as one flat dict: an Estimate ``x`` becomes ``x``, ``x_low``, ``x_high``."""
    row: dict[str, Any] = {}
    for name in type(model).model_fields:
        if name in skip:
            continue
        value = getattr(model, name)
        if isinstance(value, Estimate):
            row |= {name: value.estimate, f"{name}_low": value.low, f"{name}_high": value.high}
        else:
            row[name] = value
    return row


def _columns(model: type[Frozen], skip: tuple[str, ...] = ()) -> list[str]:
    columns = []
    for name, info in model.model_fields.items():
        if name not in skip:
            columns += [name, f"{name}_low", f"{name}_high"] if info.annotation in (Estimate, "Estimate") else [name]
    return columns


class StudyAnalysis(Frozen):
    """The analysis of a study's finished trials: settings, variants, comparisons and order checks."""

    metric: str
    reference: str | None
    confidence: float
    power: float
    target_effect: float
    n_bootstrap: int
    bootstrap_seed: int
    margin: float
    variants: list[VariantResult]
    comparisons: list[ComparisonResult]
    secondary: list[ComparisonResult] = []
    order_checks: list[ComparisonResult] = []
    looks: list[dict[str, Any]] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reference_found(self) -> bool:
        """Whether the reference variant has finished trials (or any comparison was made)."""
        return bool(self.comparisons) or any(v.variant == self.reference and v.n for v in self.variants)

    def variant(self, label: str) -> VariantResult:
        """The variant group of this display label (KeyError when absent)."""
        for result in self.variants:
            if result.label == label:
                return result
        raise KeyError(label)

    def comparison(self, label: str) -> ComparisonResult | None:
        """The comparison of the variant group ``label`` with its reference (None for a reference)."""
        return next((c for c in self.comparisons if c.label == label), None)

    @staticmethod
    def columns() -> list[str]:
        """The keys of `rows()`, in order: the variant's fields, then its comparison's."""
        return _columns(VariantResult) + _columns(ComparisonResult, SHARED)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per variant (summary.csv's rows): its fields and its comparison's (none for a reference)."""
        rows = []
        for result in self.variants:
            compared = self.comparison(result.label)
            rows.append(_flat(result) | (_flat(compared, SHARED) if compared is not None else {}))
        return rows

    def to_json(self) -> dict[str, Any]:
        """The analysis as JSON-ready data (NaN as null)."""
        return self.model_dump(mode="json")
