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
from krpo_bench.dashboards import figures
from krpo_bench.dashboards.curves import Curve, aggregate_curve
from krpo_bench.dashboards.source import CURVE_METRICS, SHUFFLE_PARAM, RunData, StudyData
from plotly.offline import get_plotlyjs

from krpo_bench import stats
from krpo_bench.analysis import format as fmt
from krpo_bench.analysis.analyze import AnalysisSettings, analyze
from krpo_bench.analysis.model import ComparisonResult, Estimate, StudyAnalysis, VariantResult, json_ready
from krpo_bench.analysis.records import records_from_runs

COST_METRICS = ("cost/wall_time_s", "cost/gpu_seconds", "cost/tokens", "cost/mean_step_time_s")
STEP_TIME = "cost/mean_step_time_s"
PNG_CURVES = ("eval/accuracy", "train/reward")
SCALE = 100.0
RANK_TEST = {"paired": "Wilcoxon signed-rank", "unpaired": "Wilcoxon rank-sum"}
_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
.meta{color:#666} nav a{margin-right:1rem} .note{color:#666;font-style:italic}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #e5e5e5;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} td:last-child{text-align:left;min-width:24em}
th{white-space:nowrap}
ul.verdicts li{margin:.3rem 0;font-size:1.05rem}
"""


@dataclass(frozen=True)
class Summary:
    """Everything the report shows, computed once: the study's analysis (krpo_bench.analysis) and cost."""

    study_id: str | None
    study_name: str | None
    experiment_ids: list[str]
    status_counts: dict[str, int]
    analysis: StudyAnalysis
    cost: list[dict[str, Any]]
    cost_trials: pd.DataFrame = field(repr=False)

    @property
    def labels(self) -> list[str]:
        """The variant groups' display labels, in the analysis's order."""
        return [v.label for v in self.analysis.variants]

    @property
    def identity(self) -> figures.Identity:
        """Per label: its variant and grid point as text (the figures' panels and colours)."""
        return {v.label: (v.variant, fmt.grid_point(v.grid_point)) for v in self.analysis.variants}

    def to_json(self) -> dict[str, Any]:
        """The summary as summary.json holds it: the study, the analysis's JSON dump and cost (NaN as null)."""
        study = {
            "study_id": self.study_id,
            "study_name": self.study_name,
            "experiment_ids": self.experiment_ids,
            "status_counts": self.status_counts,
        }
        return {"study": study, **self.analysis.to_json(), "cost": json_ready(self.cost)}


@dataclass(frozen=True)
class Report:
    """Where a built report lies, and its summary."""

    out_dir: Path
    html_path: Path
    csv_path: Path
    json_path: Path
    figures: list[Path]
    summary: Summary


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
            v
            for v in study.variants
            if v not in shuffled and signatures[v].get("estimator.name") == own.get("estimator.name")
        ]
        if candidates:
            distance = {
                v: sum(own.get(k) != signatures[v].get(k) for k in own.keys() | signatures[v].keys())
                for v in candidates
            }
            pairs.append((variant, min(candidates, key=distance.__getitem__)))
    return pairs


def _step_time(run: RunData) -> float:
    if STEP_TIME in run.final:
        return run.final[STEP_TIME]
    history = run.histories.get("train/step_time_s")
    return float(history.mean()) if history is not None and len(history) else math.nan


def _cost_rows(study: StudyData, analysis: StudyAnalysis) -> tuple[pd.DataFrame, list[dict]]:
    """Per trial and per variant: wall time, step time and the step time against the variant's reference."""
    labels = [v.label for v in analysis.variants]
    versus_of = {v.label: v.label for v in analysis.variants if v.variant == analysis.reference}
    versus_of |= {c.label: c.reference_label for c in analysis.comparisons}
    trials = pd.DataFrame(
        [
            {
                "variant": r.variant,
                "seed": r.seed,
                "run_id": r.run_id,
                **{m: r.final.get(m, math.nan) for m in COST_METRICS},
                STEP_TIME: _step_time(r),
            }
            for v in labels
            for r in study.runs_of(v)
        ],
        columns=["variant", "seed", "run_id", *COST_METRICS],
    )
    means = trials.groupby("variant", sort=False)[list(COST_METRICS)].mean()
    ref_step = {v: means[STEP_TIME].get(versus_of.get(v), math.nan) for v in means.index}
    per_variant = [
        {
            "variant": v,
            "trials": int((trials["variant"] == v).sum()),
            **{m: float(means.loc[v, m]) for m in COST_METRICS},
            "step_time_ratio": float(means.loc[v, STEP_TIME] / ref_step[v]) if ref_step[v] > 0 else math.nan,
        }
        for v in means.index
    ]
    return trials, per_variant


def summarize(study: StudyData, settings: AnalysisSettings | None = None) -> Summary:
    """The analysis of the study's runs (each variant against the reference at its grid point, paired
    by seed where the seed sets match; shuffled variants against their unshuffled twins) and its
    cost. ``settings``: the study's (its spec's analysis block and stored looks); default settings
    compare with grpo."""
    settings = settings or AnalysisSettings()
    analysis = analyze(records_from_runs(study), settings, order_twins(study))
    trials, cost = _cost_rows(study, analysis)
    return Summary(
        study_id=study.study_id,
        study_name=study.study_name,
        experiment_ids=study.experiment_ids,
        status_counts=study.status_counts,
        analysis=analysis,
        cost=cost,
        cost_trials=trials,
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


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, na_rep="–")


def _analysis(c: ComparisonResult) -> str:
    return "paired by seed" if c.analysis == "paired" else "unpaired (Welch)"


def _comparison_cells(c: ComparisonResult | None, reference: str | None) -> dict[str, str]:
    """The table cells of one comparison (empty cells for the reference itself)."""

    def cell(render: Callable[[ComparisonResult], str]) -> str:
        return render(c) if c is not None else ""

    return {
        "analysis": cell(_analysis),
        f"Δ vs {reference}, points [95 % CI]": cell(lambda c: fmt.with_interval(c.difference, fmt.signed_points)),
        "Δ bootstrap 95 % CI": cell(lambda c: fmt.interval(c.difference_bootstrap, fmt.signed_points)),
        "Δ unpaired (Welch) 95 % CI": cell(lambda c: fmt.interval(c.welch_difference, fmt.signed_points)),
        f"P(> {reference}) [95 % CI]": cell(lambda c: fmt.with_interval(c.prob_improvement, fmt.probability)),
        "Δ seeds + test items 95 % CI": cell(lambda c: fmt.interval(c.item_difference, fmt.signed_points)),
        "t-test p": cell(lambda c: fmt.p_value(c.p_value)),
        "Holm p": cell(lambda c: fmt.p_value(c.p_holm)),
        "Wilcoxon p": cell(lambda c: fmt.p_value(c.rank_p_value)),
        "TOST p (Holm)": cell(lambda c: f"{fmt.p_value(c.tost_p)} ({fmt.p_value(c.tost_p_holm)})"),
        "sd ratio [95 % CI]": cell(lambda c: fmt.with_interval(c.spread_ratio, fmt.probability)),
        "detectable, points": cell(lambda c: fmt.points(c.mde)),
        "seeds for target": cell(lambda c: fmt.seeds(c.seeds_needed)),
        "verdict": cell(lambda c: c.verdict + (f" (look {c.look})" if c.look is not None else "")),
        "seeds to decide": cell(lambda c: fmt.seeds(c.seeds_to_decide)),
    }


def _final_table(summary: Summary) -> str:
    analysis = summary.analysis
    frame = pd.DataFrame(
        [
            {
                "variant": v.label,
                "seeds": v.n,
                "mean % [95 % CI]": fmt.with_interval(v.mean),
                "IQM % [95 % CI]": fmt.with_interval(v.iqm),
                **_comparison_cells(c := analysis.comparison(v.label), analysis.reference),
                "in words": c.sentence if c is not None else "reference",
            }
            for v in analysis.variants
        ]
    )
    return (
        _table(frame)
        + _note(
            f"Variants that ran the same seeds are compared seed by seed (paired t-interval and test, "
            f"{RANK_TEST['paired']} test, share of seeds won); otherwise as independent samples (Welch's "
            f"t-interval and test, {RANK_TEST['unpaired']} test, P(X > Y) over all pairs). 'detectable' is the "
            f"difference a two-sided test at level {1 - analysis.confidence:.2g} finds with "
            f"{analysis.power:.0%} power given the seeds run and their observed spread; 'seeds for target' is how many "
            f"seeds (per variant when unpaired) would detect {analysis.target_effect * SCALE:g} points. "
            f"Verdicts: better / worse when the difference test's p, Holm-adjusted over the "
            f"{len(analysis.comparisons)} comparisons with the reference on {analysis.metric} (the family), is below "
            f"the level; equivalent when the TOST within ±{analysis.margin * SCALE:g} points (Holm-adjusted) is; "
            f"otherwise undecided, with about how many seeds would decide it. The Δ interval covers the seeds' noise on "
            f"the test items these trials shared; 'seeds + test items' (where trials stored per-item outcomes) also "
            f"covers the test items' sampling noise, so it speaks for the task rather than these items. 'sd ratio' is "
            f"the spread of the variant's seeds over the reference's (stability)."
        )
        + _looks_section(analysis)
        + _secondary_section(analysis)
    )


def _looks_section(analysis: StudyAnalysis) -> str:
    """A sequential study's looks: seeds at each and what each decided."""
    if not analysis.looks:
        return ""
    frame = pd.DataFrame(
        [
            {
                "look": look["look"],
                "seeds": look["seeds"],
                "comparison": d["label"],
                "verdict": d["verdict"],
                "Holm p": fmt.p_value(d["p_holm"]),
                "TOST Holm p": fmt.p_value(d["tost_p_holm"]),
                "level (difference)": fmt.p_value(d["difference_level"]),
                "level (TOST)": fmt.p_value(d["tost_level"]),
            }
            for look in analysis.looks
            for d in look["decisions"]
        ]
    )
    return "<h3>looks (seeds until decided, O'Brien-Fleming boundaries)</h3>" + _table(frame)


def _secondary_section(analysis: StudyAnalysis) -> str:
    """Secondary endpoints, each comparison labelled exploratory (raw p-values, no multiplicity control)."""
    if not analysis.secondary:
        return ""
    frame = pd.DataFrame(
        [
            {
                "endpoint": c.metric,
                "variant": c.label,
                "versus": c.reference_label,
                "Δ, points [95 % CI]": fmt.with_interval(c.difference, fmt.signed_points),
                "p (raw)": fmt.p_value(c.p_value),
                "verdict (exploratory)": c.verdict,
            }
            for c in analysis.secondary
        ]
    )
    return "<h3>secondary endpoints (exploratory)</h3>" + _table(frame)


def _final_points(summary: Summary) -> tuple[dict[str, np.ndarray], dict[str, Estimate]]:
    variants: list[VariantResult] = summary.analysis.variants
    return {v.label: np.array(v.values, dtype=float) for v in variants}, {v.label: v.mean for v in variants}


def _div(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _curves_section(
    curves: Mapping[str, Mapping[str, Curve]], colors: Mapping[str, str], identity: figures.Identity
) -> str:
    if not curves:
        return _note("no step-indexed metrics were logged by the finished runs")
    return "".join(_div(figures.curve_figure(c, metric, colors, identity)) for metric, c in curves.items())


def _cost_section(summary: Summary, colors: Mapping[str, str]) -> str:
    trials = summary.cost_trials
    per_variant = pd.DataFrame(summary.cost)
    if per_variant.empty:
        return _note("no finished trials")
    per_variant["step_time_ratio"] = per_variant["step_time_ratio"].map(
        lambda x: f"{x:.2f}×" if math.isfinite(x) else "–"
    )
    per_variant = per_variant.rename(columns={"step_time_ratio": f"step time vs {summary.analysis.reference}"})
    present = [m for m in COST_METRICS if trials[m].fillna(0).ne(0).any()]  # all zero (no GPU): not shown
    plot = _div(figures.cost_figure(trials, present, colors)) if present else _note("no cost metrics logged")
    return (
        f"<h3>per variant (means)</h3>{_table(per_variant.round(3))}{plot}<h3>per trial</h3>{_table(trials.round(3))}"
    )


def _diagnostics_section(study: StudyData, summary: Summary, colors: Mapping[str, str]) -> str:
    samples = {
        v: np.concatenate([r.advantages for r in study.runs_of(v) if r.advantages is not None])
        for v in summary.labels
        if any(r.advantages is not None for r in study.runs_of(v))
    }
    if samples:
        described = pd.DataFrame(
            [
                {
                    "variant": v,
                    "n": len(a),
                    "mean": a.mean(),
                    "std": a.std(),
                    "|max|": np.abs(a).max(),
                    "fraction zero": float(np.mean(a == 0)),
                }
                for v, a in samples.items()
                if len(a)
            ]
        )
        parts = [_div(figures.advantage_figure(samples, colors)), _table(described.round(4))]
    else:
        parts = [_note("no run logged diagnostics/advantages.json")]
    parts.append(_scale_section(study, summary, colors))
    parts.append("<h3>order sensitivity</h3>")
    order = summary.analysis.order_checks
    if order:
        frame = pd.DataFrame(
            [
                {
                    "shuffled variant": o.label,
                    "unshuffled twin": o.reference_label,
                    "analysis": _analysis(o),
                    "Δ, points [95 % CI]": fmt.with_interval(o.difference, fmt.signed_points),
                    "t-test p": fmt.p_value(o.p_value),
                    "verdict": o.sentence,
                }
                for o in order
            ]
        )
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
        {
            "variant": run.variant,
            "estimator": run.params.get("estimator.name", ""),
            "seed": run.seed,
            **{label: run.histories[m].mean() for m, label in SCALE_METRICS.items() if m in run.histories},
        }
        for label in summary.labels
        for run in study.runs_of(label)
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
    analysis = summary.analysis
    verdicts = [c.sentence for c in analysis.comparisons]
    if analysis.reference is not None and not analysis.reference_found:
        verdicts = [f"reference variant {analysis.reference!r} has no finished runs: no comparisons"]
    values, means = _final_points(summary)
    sections = [
        ("curves", "Curves", _curves_section(curves, colors, summary.identity)),
        (
            "final",
            "Final table",
            _final_table(summary)
            + _div(figures.final_figure(values, means, colors, analysis.metric, summary.identity)),
        ),
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
        f'<p class="meta">metric {html.escape(analysis.metric)} · reference {html.escape(analysis.reference or fmt.MISSING)}'
        f" · trials: {html.escape(counts or 'none')} (only finished trials are analysed)</p>"
        f'<ul class="verdicts">{"".join(f"<li>{html.escape(s)}</li>" for s in verdicts)}</ul>'
        f"<nav>{''.join(f'<a href=#{sid}>{title}</a>' for sid, title, _ in sections)}</nav>"
        f"{body}</body></html>"
    )


def _analyse(
    study: StudyData, settings: AnalysisSettings | None
) -> tuple[Summary, dict[str, dict[str, Curve]], dict[str, str]]:
    summary = summarize(study, settings)
    curves = {m: c for m in CURVE_METRICS if (c := study_curves(study, m, summary.labels))}
    return summary, curves, figures.palette(summary.labels)


def render_html(
    study: StudyData,
    settings: AnalysisSettings | None = None,
    optuna_study: optuna.Study | None = None,
    refresh_seconds: int | None = None,
) -> str:
    """The report as one self-contained HTML string (plotly.js inlined; optional auto-refresh)."""
    summary, curves, colors = _analyse(study, settings)
    return _page(study, summary, curves, colors, optuna_study, refresh_seconds)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet cannot run as a formula: prefixed with ``'`` when it starts like one."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _csv_value(value: Any) -> Any:
    """A list of numbers as ``a;b;c``, other structures as JSON, scalars as they are."""
    if isinstance(value, (list, tuple)):
        scalar = all(not isinstance(v, (list, tuple, dict)) for v in value)
        return ";".join(str(v) for v in value) if scalar else json.dumps(value)
    return value


def _csv(summary: Summary, path: Path) -> None:
    frame = pd.DataFrame(summary.analysis.rows(), columns=StudyAnalysis.columns())
    frame.map(_csv_value).map(csv_cell).to_csv(path, index=False)


def build_report(
    study: StudyData,
    out_dir: str | Path,
    settings: AnalysisSettings | None = None,
    optuna_study: optuna.Study | None = None,
    refresh_seconds: int | None = None,
) -> Report:
    """Write report.html, figures/*.png, summary.csv and summary.json into `out_dir`."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summary, curves, colors = _analyse(study, settings)
    metric = summary.analysis.metric
    pngs = [
        figures.curves_png(
            curves[m], out / "figures" / f"{m.replace('/', '_')}_curves.png", m, colors, summary.identity
        )
        for m in PNG_CURVES
        if m in curves
    ]
    values, means = _final_points(summary)
    if values:
        pngs.append(
            figures.final_png(
                values, means, out / "figures" / f"{metric.replace('/', '_')}.png", colors, metric, summary.identity
            )
        )
    html_path = out / "report.html"
    html_path.write_text(_page(study, summary, curves, colors, optuna_study, refresh_seconds), encoding="utf-8")
    csv_path, json_path = out / "summary.csv", out / "summary.json"
    _csv(summary, csv_path)
    json_path.write_text(json.dumps(summary.to_json(), indent=2, allow_nan=False), encoding="utf-8")
    return Report(out, html_path, csv_path, json_path, pngs, summary)
