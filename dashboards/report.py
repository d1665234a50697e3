"""Assemble a study report: analysis (a typed `Summary`), then rendering (HTML page, PNGs, CSV, JSON)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from krpo_bench import stats
from krpo_bench.dashboards import figures
from krpo_bench.dashboards.curves import Curve, aggregate_curve
from krpo_bench.dashboards.source import CURVE_METRICS, SHUFFLE_PARAM, RunData, StudyData
from krpo_bench.spec.study import reference_for

METRIC = "final/accuracy"
COST_METRICS = ("cost/wall_time_s", "cost/gpu_seconds", "cost/tokens", "cost/mean_step_time_s")
STEP_TIME = "cost/mean_step_time_s"
PNG_CURVES = ("eval/accuracy", "train/reward")
SCALE = 100.0
CSV_COLUMNS = (
    "variant", "n_seeds", "seeds", "values", "mean", "ci_low", "ci_high", "iqm", "iqm_ci_low", "iqm_ci_high",
    "reference", "analysis", "n_variant", "n_reference", "diff", "diff_ci_low", "diff_ci_high", "diff_boot_ci_low",
    "diff_boot_ci_high", "prob_improvement", "prob_improvement_ci_low", "prob_improvement_ci_high", "p_value",
    "rank_p_value", "welch_diff", "welch_ci_low", "welch_ci_high", "welch_p", "mde", "target_effect",
    "seeds_needed", "sentence",
)
RANK_TEST = {"paired": "Wilcoxon signed-rank", "unpaired": "Wilcoxon rank-sum"}
_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
.meta{color:#666} nav a{margin-right:1rem} .note{color:#666;font-style:italic}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #e5e5e5;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} td:last-child{text-align:left}
ul.verdicts li{margin:.3rem 0;font-size:1.05rem}
"""


@dataclass(frozen=True)
class VariantSummary:
    """One variant's final scores (seed by seed), their mean and IQM, and its comparison with the reference."""

    variant: str
    seeds: list[int | None]
    values: list[float]
    mean: stats.Interval
    iqm: stats.Interval
    comparison: stats.Comparison | None

    def row(self) -> dict[str, Any]:
        """The flat row of summary.csv / summary.json."""
        row: dict[str, Any] = {
            "variant": self.variant, "n_seeds": len(self.values), "seeds": self.seeds, "values": self.values,
            "mean": self.mean.estimate, "ci_low": self.mean.low, "ci_high": self.mean.high,
            "iqm": self.iqm.estimate, "iqm_ci_low": self.iqm.low, "iqm_ci_high": self.iqm.high,
        }
        return row | (self.comparison.flat() if self.comparison is not None else {})


@dataclass(frozen=True)
class OrderCheck:
    """A variant run on shuffled groups against its unshuffled twin."""

    variant: str
    twin: str
    comparison: stats.Comparison


@dataclass(frozen=True)
class Summary:
    """Everything the report shows, computed once: statistics per variant, order checks and cost."""

    study_id: str | None
    study_name: str | None
    experiment_ids: list[str]
    status_counts: dict[str, int]
    metric: str
    reference: str
    reference_found: bool
    confidence: float
    n_bootstrap: int
    bootstrap_seed: int
    target_effect: float
    variants: list[VariantSummary]
    order_sensitivity: list[OrderCheck]
    cost: list[dict[str, Any]]
    cost_trials: pd.DataFrame = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The summary as summary.json holds it (non-finite numbers as null)."""
        return _json_ready({
            "study": {"study_id": self.study_id, "study_name": self.study_name,
                      "experiment_ids": self.experiment_ids, "status_counts": self.status_counts},
            "metric": self.metric, "reference": self.reference, "reference_found": self.reference_found,
            "confidence": self.confidence, "power": stats.POWER, "target_effect": self.target_effect,
            "n_bootstrap": self.n_bootstrap, "bootstrap_seed": self.bootstrap_seed,
            "variants": [v.row() for v in self.variants], "cost": self.cost,
            "order_sensitivity": [{"variant": o.variant, "twin": o.twin, **o.comparison.flat()}
                                  for o in self.order_sensitivity],
        })


@dataclass(frozen=True)
class Report:
    """Where a built report lies, and its summary."""

    out_dir: Path
    html_path: Path
    csv_path: Path
    json_path: Path
    figures: list[Path]
    summary: Summary


def _values(runs: Sequence[RunData], metric: str) -> tuple[list[int | None], np.ndarray]:
    kept = [r for r in runs if math.isfinite(r.final.get(metric, math.nan))]
    return [r.seed for r in kept], np.array([r.final[metric] for r in kept], dtype=float)


def _ordered_variants(study: StudyData, reference: str) -> list[str]:
    variants = study.variants
    return ([reference] if reference in variants else []) + [v for v in variants if v != reference]


def _signature(runs: Sequence[RunData]) -> dict[str, str]:
    """Parameters shared by all runs of a variant, without the shuffle flag."""
    shared = dict(runs[0].params)
    for run in runs[1:]:
        shared = {k: v for k, v in shared.items() if run.params.get(k) == v}
    shared.pop(SHUFFLE_PARAM, None)
    return shared


def order_twins(study: StudyData) -> list[tuple[str, str]]:
    """(shuffled variant, its unshuffled twin): the same estimator, fewest differing parameters."""
    signatures = {v: _signature(study.runs_of(v)) for v in study.variants}
    shuffled = [v for v in study.variants if all(r.shuffled for r in study.runs_of(v))]
    pairs = []
    for variant in shuffled:
        own = signatures[variant]
        candidates = [
            v for v in study.variants
            if v not in shuffled and signatures[v].get("estimator.name") == own.get("estimator.name")
        ]
        if candidates:
            distance = {v: sum(own.get(k) != signatures[v].get(k) for k in own.keys() | signatures[v].keys())
                        for v in candidates}
            pairs.append((variant, min(candidates, key=distance.__getitem__)))
    return pairs


def _step_time(run: RunData) -> float:
    if STEP_TIME in run.final:
        return run.final[STEP_TIME]
    history = run.histories.get("train/step_time_s")
    return float(history.mean()) if history is not None and len(history) else math.nan


def _cost_rows(study: StudyData, variants: Sequence[str], versus_of: dict[str, str]) -> tuple[pd.DataFrame, list[dict]]:
    """Per trial and per variant: wall time, step time and the step time against the variant's reference."""
    trials = pd.DataFrame([
        {"variant": r.variant, "seed": r.seed, "run_id": r.run_id,
         **{m: r.final.get(m, math.nan) for m in COST_METRICS}, STEP_TIME: _step_time(r)}
        for v in variants for r in study.runs_of(v)
    ], columns=["variant", "seed", "run_id", *COST_METRICS])
    means = trials.groupby("variant", sort=False)[list(COST_METRICS)].mean()
    ref_step = {v: means[STEP_TIME].get(versus_of[v], math.nan) for v in means.index}
    per_variant = [
        {"variant": v, "trials": int((trials["variant"] == v).sum()),
         **{m: float(means.loc[v, m]) for m in COST_METRICS},
         "step_time_ratio": float(means.loc[v, STEP_TIME] / ref_step[v]) if ref_step[v] > 0 else math.nan}
        for v in means.index
    ]
    return trials, per_variant


def summarize(
    study: StudyData,
    reference: str = "grpo",
    metric: str = METRIC,
    target_effect: float = stats.TARGET_EFFECT,
    confidence: float = stats.CONFIDENCE,
    n_resamples: int = stats.N_BOOTSTRAP,
    seed: int = stats.SEED,
) -> Summary:
    """Per-variant statistics of `metric`, each variant against `reference` (paired by seed where the
    seed sets match), the detectable effect of each comparison, cost and order checks."""
    variants = _ordered_variants(study, reference)
    values = {v: _values(study.runs_of(v), metric) for v in variants}
    versus_of = {v: reference_for(v, variants, reference) for v in variants}
    found = any(versus_of[v] in values and versus_of[v] != v for v in variants) or reference in values

    def versus(variant: str, other: str) -> stats.Comparison:
        (seeds_x, x), (seeds_y, y) = values[variant], values[other]
        return stats.compare(x, y, variant, other, seeds_x, seeds_y, target_effect, confidence, n_resamples,
                             seed, SCALE)

    rows = [
        VariantSummary(
            variant=variant, seeds=values[variant][0], values=values[variant][1].tolist(),
            mean=stats.mean_ci(values[variant][1], confidence),
            iqm=stats.iqm_ci(values[variant][1], confidence, n_resamples, seed),
            comparison=versus(variant, versus_of[variant]) if versus_of[variant] in values and variant != versus_of[variant] else None,
        )
        for variant in variants
    ]
    order = [OrderCheck(shuffled, twin, versus(shuffled, twin)) for shuffled, twin in order_twins(study)]
    trials, cost = _cost_rows(study, variants, versus_of)
    return Summary(
        study_id=study.study_id, study_name=study.study_name, experiment_ids=study.experiment_ids,
        status_counts=study.status_counts, metric=metric, reference=reference, reference_found=found,
        confidence=confidence, n_bootstrap=n_resamples, bootstrap_seed=seed, target_effect=target_effect,
        variants=rows, order_sensitivity=order, cost=cost, cost_trials=trials,
    )


def study_curves(
    study: StudyData, metric: str, variants: Sequence[str], n_resamples: int = stats.N_BOOTSTRAP
) -> dict[str, Curve]:
    """Per-variant aggregated curve of one step-indexed metric (variants without it are left out)."""
    curves = {}
    for variant in variants:
        runs = [r for r in study.runs_of(variant) if metric in r.histories]
        seeds = [r.seed for r in runs]
        unique = len(set(seeds)) == len(seeds) and None not in seeds
        series = {(r.seed if unique else r.run_id[:8]): r.histories[metric] for r in runs}
        if series:
            curves[variant] = aggregate_curve(series, metric, n_resamples=n_resamples)
    return curves


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _points(value: float) -> str:
    return f"{value * SCALE:.1f}" if math.isfinite(value) else "–"


def _signed_points(value: float) -> str:
    return f"{value * SCALE:+.1f}" if math.isfinite(value) else "–"


def _probability(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "–"


def _with_ci(interval: stats.Interval | None, fmt: Callable[[float], str] = _points, bounds_only: bool = False) -> str:
    """An interval as `estimate [low, high]` (bounds left out when undefined; empty for None)."""
    if interval is None:
        return ""
    bounds = f"[{fmt(interval.low)}, {fmt(interval.high)}]" if interval.defined else ""
    return bounds if bounds_only else f"{fmt(interval.estimate)} {bounds}".strip()


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, na_rep="–")


def _p(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else ""


def _analysis(c: stats.Comparison) -> str:
    return "paired by seed" if c.analysis == "paired" else "unpaired (Welch)"


def _comparison_cells(c: stats.Comparison | None, reference: str) -> dict[str, str]:
    """The table cells of one comparison (empty cells for the reference itself)."""
    def cell(render: Callable[[stats.Comparison], str]) -> str:
        return render(c) if c is not None else ""

    return {
        "analysis": cell(_analysis),
        f"Δ vs {reference}, points [95 % CI]": cell(lambda c: _with_ci(c.difference, _signed_points)),
        "Δ bootstrap 95 % CI": cell(lambda c: _with_ci(c.difference_bootstrap, _signed_points, bounds_only=True)),
        "Δ unpaired (Welch) 95 % CI": cell(lambda c: _with_ci(c.welch_difference, _signed_points, bounds_only=True)),
        f"P(> {reference}) [95 % CI]": cell(lambda c: _with_ci(c.prob_improvement, _probability)),
        "t-test p": cell(lambda c: _p(c.p_value)),
        "Wilcoxon p": cell(lambda c: _p(c.rank_p_value)),
        "detectable, points": cell(lambda c: _points(c.mde)),
        "seeds for target": cell(lambda c: str(c.seeds_needed) if c.seeds_needed is not None else "–"),
    }


def _final_table(summary: Summary) -> str:
    frame = pd.DataFrame([
        {
            "variant": v.variant, "seeds": len(v.values),
            "mean % [95 % CI]": _with_ci(v.mean),
            "IQM % [95 % CI]": _with_ci(v.iqm),
            **_comparison_cells(v.comparison, summary.reference),
            "verdict": v.comparison.sentence if v.comparison is not None else "reference",
        }
        for v in summary.variants
    ])
    return _table(frame) + _note(
        f"Variants that ran the same seeds are compared seed by seed (paired t-interval and test, "
        f"{RANK_TEST['paired']} test, share of seeds won); otherwise as independent samples (Welch's "
        f"t-interval and test, {RANK_TEST['unpaired']} test, P(X > Y) over all pairs). 'detectable' is the "
        f"difference a two-sided test at level {1 - summary.confidence:.2g} finds with "
        f"{stats.POWER:.0%} power given the seeds run and their observed spread; 'seeds for target' is how many "
        f"seeds (per variant when unpaired) would detect {summary.target_effect * SCALE:g} points."
    )


def _final_points(summary: Summary) -> tuple[dict[str, np.ndarray], dict[str, stats.Interval]]:
    values = {v.variant: np.array(v.values, dtype=float) for v in summary.variants}
    return values, {v.variant: v.mean for v in summary.variants}


def _div(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _curves_section(curves: Mapping[str, Mapping[str, Curve]], colors: Mapping[str, str]) -> str:
    if not curves:
        return _note("no step-indexed metrics were logged by the finished runs")
    return "".join(_div(figures.curve_figure(c, metric, colors)) for metric, c in curves.items())


def _cost_section(summary: Summary, colors: Mapping[str, str]) -> str:
    trials = summary.cost_trials
    per_variant = pd.DataFrame(summary.cost)
    if per_variant.empty:
        return _note("no finished trials")
    per_variant["step_time_ratio"] = per_variant["step_time_ratio"].map(
        lambda x: f"{x:.2f}×" if math.isfinite(x) else "–")
    per_variant = per_variant.rename(columns={"step_time_ratio": f"step time vs {summary.reference}"})
    present = [m for m in COST_METRICS if trials[m].notna().any()]
    plot = _div(figures.cost_figure(trials, present, colors)) if present else _note("no cost metrics logged")
    return (f"<h3>per variant (means)</h3>{_table(per_variant.round(3))}{plot}"
            f"<h3>per trial</h3>{_table(trials.round(3))}")


def _diagnostics_section(study: StudyData, summary: Summary, colors: Mapping[str, str]) -> str:
    samples = {
        v: np.concatenate([r.advantages for r in study.runs_of(v) if r.advantages is not None])
        for v in (row.variant for row in summary.variants)
        if any(r.advantages is not None for r in study.runs_of(v))
    }
    if samples:
        described = pd.DataFrame([
            {"variant": v, "n": len(a), "mean": a.mean(), "std": a.std(), "|max|": np.abs(a).max(),
             "fraction zero": float(np.mean(a == 0))}
            for v, a in samples.items() if len(a)
        ])
        parts = [_div(figures.advantage_figure(samples, colors)), _table(described.round(4))]
    else:
        parts = [_note("no run logged diagnostics/advantages.json")]
    parts.append(_scale_section(study, summary, colors))
    parts.append("<h3>order sensitivity</h3>")
    order = summary.order_sensitivity
    if order:
        frame = pd.DataFrame([
            {"shuffled variant": o.variant, "unshuffled twin": o.twin, "analysis": _analysis(o.comparison),
             "Δ, points [95 % CI]": _with_ci(o.comparison.difference, _signed_points),
             "t-test p": _p(o.comparison.p_value), "verdict": o.comparison.sentence}
            for o in order
        ])
        parts.append(_table(frame))
    else:
        parts.append(_note(f"no variant with {SHUFFLE_PARAM}=True and an unshuffled twin"))
    return "".join(parts)


SCALE_METRICS = {
    "adv/std": "advantage std",
    "adv/scale_mean": "scale (divisor)",
    "adv/baseline_mean": "baseline mean",
    "adv/abs_max": "|advantage| max",
}


def _scale_section(study: StudyData, summary: Summary, colors: Mapping[str, str]) -> str:
    """Each variant's advantage scale and baseline: per-trial means over the logged steps."""
    rows = [
        {"variant": run.variant, "estimator": run.params.get("estimator.name", ""), "seed": run.seed,
         **{label: run.histories[m].mean() for m, label in SCALE_METRICS.items() if m in run.histories}}
        for row in summary.variants for run in study.runs_of(row.variant)
    ]
    frame = pd.DataFrame(rows)
    present = [label for label in SCALE_METRICS.values() if label in frame]
    title = "<h3>advantage scale and baseline (means over steps and seeds)</h3>"
    if not present:
        return title + _note("no run logged adv/* step metrics")
    per_variant = frame.groupby(["variant", "estimator"], sort=False)[present].mean().reset_index()
    return title + _table(per_variant.round(4)) + _div(figures.scale_figure(frame, present, colors))


def _search_section(optuna_study: optuna.Study) -> str:
    return "".join(
        f"<h3>{html.escape(title)}</h3>" + (_note(view) if isinstance(view, str) else _div(view))
        for title, view in figures.search_figures(optuna_study)
    )


def _page(
    study: StudyData,
    summary: Summary,
    curves: Mapping[str, Mapping[str, Curve]],
    colors: Mapping[str, str],
    optuna_study: optuna.Study | None,
    refresh_seconds: int | None,
) -> str:
    name = study.study_name or study.study_id or "study"
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.status_counts.items()))
    verdicts = [v.comparison.sentence for v in summary.variants if v.comparison is not None]
    if not summary.reference_found:
        verdicts = [f"reference variant {summary.reference!r} has no finished runs: no comparisons"]
    values, means = _final_points(summary)
    sections = [
        ("curves", "Curves", _curves_section(curves, colors)),
        ("final", "Final table", _final_table(summary)
         + _div(figures.final_figure(values, means, colors, summary.metric))),
        ("cost", "Cost", _cost_section(summary, colors)),
        ("diagnostics", "KRPO diagnostics", _diagnostics_section(study, summary, colors)),
    ]
    if optuna_study is not None:
        sections.append(("search", "Search", _search_section(optuna_study)))
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{content}</section>' for sid, title, content in sections)
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{refresh}'
        f"<title>krpo-bench · {html.escape(name)}</title><style>{_CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(name)}</h1>"
        f'<p class="meta">metric {html.escape(summary.metric)} · reference {html.escape(summary.reference)}'
        f" · trials: {html.escape(counts or 'none')} (only finished trials are analysed)</p>"
        f'<ul class="verdicts">{"".join(f"<li>{html.escape(s)}</li>" for s in verdicts)}</ul>'
        f'<nav>{"".join(f"<a href=#{sid}>{title}</a>" for sid, title, _ in sections)}</nav>'
        f"{body}</body></html>"
    )


def _analyse(
    study: StudyData, reference: str, metric: str, target_effect: float
) -> tuple[Summary, dict[str, dict[str, Curve]], dict[str, str]]:
    summary = summarize(study, reference, metric, target_effect)
    variants = [v.variant for v in summary.variants]
    curves = {m: c for m in CURVE_METRICS if (c := study_curves(study, m, variants))}
    return summary, curves, figures.palette(variants)


def render_html(
    study: StudyData,
    reference: str = "grpo",
    optuna_study: optuna.Study | None = None,
    refresh_seconds: int | None = None,
    metric: str = METRIC,
    target_effect: float = stats.TARGET_EFFECT,
) -> str:
    """The report as one self-contained HTML string (plotly.js inlined; optional auto-refresh)."""
    summary, curves, colors = _analyse(study, reference, metric, target_effect)
    return _page(study, summary, curves, colors, optuna_study, refresh_seconds)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet cannot run as a formula: prefixed with ``'`` when it starts like one."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _csv(summary: Summary, path: Path) -> None:
    frame = pd.DataFrame([v.row() for v in summary.variants], columns=list(CSV_COLUMNS))
    for column in ("seeds", "values"):
        frame[column] = frame[column].map(lambda xs: ";".join(str(x) for x in xs))
    frame.map(csv_cell).to_csv(path, index=False)


def build_report(
    study: StudyData,
    out_dir: str | Path,
    reference: str = "grpo",
    optuna_study: optuna.Study | None = None,
    refresh_seconds: int | None = None,
    metric: str = METRIC,
    target_effect: float = stats.TARGET_EFFECT,
) -> Report:
    """Write report.html, figures/*.png, summary.csv and summary.json into `out_dir`."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary, curves, colors = _analyse(study, reference, metric, target_effect)
    pngs = [
        figures.curves_png(curves[m], out / "figures" / f"{m.replace('/', '_')}_curves.png", m, colors)
        for m in PNG_CURVES if m in curves
    ]
    values, means = _final_points(summary)
    if values:
        pngs.append(figures.final_png(values, means, out / "figures" / f"{metric.replace('/', '_')}.png",
                                      colors, metric))
    html_path = out / "report.html"
    html_path.write_text(_page(study, summary, curves, colors, optuna_study, refresh_seconds), encoding="utf-8")
    csv_path, json_path = out / "summary.csv", out / "summary.json"
    _csv(summary, csv_path)
    json_path.write_text(json.dumps(summary.to_json(), indent=2, allow_nan=False), encoding="utf-8")
    return Report(out, html_path, csv_path, json_path, pngs, summary)
