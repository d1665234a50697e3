"""Figures: interactive plotly for the HTML report, static matplotlib PNGs for papers and chat."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from krpo_bench.dashboards.curves import Curve
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from krpo_bench.analysis.model import Estimate

PALETTE: tuple[str, ...] = tuple(plotly.colors.qualitative.Plotly)
CONTOUR_PARAMS = ("estimator.Q", "estimator.R")
SLICE_PARAM = "training.group_size"
_LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=50))


Identity = Mapping[str, tuple[str, str]]
"""Per display label: its variant's name and its grid point as text (``""`` without a grid)."""


def _identities(labels: Sequence[str], identity: Identity | None) -> dict[str, tuple[str, str]]:
    """Each label's (variant, grid point text); a label missing from ``identity`` is its own variant."""
    return {label: (identity or {}).get(label, (label, "")) for label in labels}


def palette(variants: Sequence[str]) -> dict[str, str]:
    """A fixed colour per variant, shared by every figure of a report."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def _text(variant: str) -> str:
    """A variant name as plotly text: escaped, since plotly renders tags (links too) in labels."""
    return html.escape(str(variant))


def _rgba(color: str, alpha: float) -> str:
    r, g, b = plotly.colors.hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha})"


def _plotly_facets(
    labels: Sequence[str], colors: Mapping[str, str], identity: Identity | None
) -> tuple[go.Figure, dict[str, dict[str, Any]]]:
    """A figure with one panel per grid point (a single panel without a grid) and, per label, where
    its traces go: ``row``/``col``, the name shown, its colour and whether it enters the legend."""
    ident = _identities(labels, identity)
    facets = _facets(labels, ident)
    colors = _grid_colors(labels, colors, ident)
    if len(facets) <= 1:
        return go.Figure(), {
            label: {"at": {}, "name": label, "color": colors[label], "legend": True} for label in labels
        }
    cols = min(3, len(facets))
    rows = math.ceil(len(facets) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[_text(p) for p in facets],
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.12,
    )
    fig.update_layout(height=_LAYOUT["height"] * rows)
    placed: dict[str, dict[str, Any]] = {}
    for i, (point, members) in enumerate(facets.items()):
        for label in members:
            placed[label] = {
                "at": {"row": i // cols + 1, "col": i % cols + 1},
                "name": ident[label][0],
                "color": colors[label],
                "legend": i == 0,
            }
    return fig, placed


def curve_figure(
    curves: Mapping[str, Curve], title: str, colors: Mapping[str, str], identity: Identity | None = None
) -> go.Figure:
    """Mean per step with its 95 % band per variant; each seed drawn faintly underneath (a grid study:
    one panel per grid point)."""
    fig, placed = _plotly_facets(list(curves), colors, identity)
    for variant, curve in curves.items():
        where = placed[variant]
        color, name, group = where["color"], _text(where["name"]), where["name"]
        for seed, series in curve.per_seed.items():
            points = series.dropna()
            fig.add_trace(
                go.Scatter(
                    x=points.index,
                    y=points.to_numpy(),
                    mode="lines",
                    line=dict(color=color, width=1),
                    opacity=0.25,
                    legendgroup=group,
                    showlegend=False,
                    name=f"{_text(variant)} seed {seed}",
                ),
                **where["at"],
            )
        banded = np.isfinite(curve.low) & np.isfinite(curve.high)
        steps = curve.steps[banded]
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([steps, steps[::-1]]),
                y=np.concatenate([curve.high[banded], curve.low[banded][::-1]]),
                mode="lines",
                fill="toself",
                fillcolor=_rgba(color, 0.2),
                line=dict(width=0),
                hoverinfo="skip",
                legendgroup=group,
                showlegend=False,
                name=f"{_text(variant)} 95 % band",
            ),
            **where["at"],
        )
        fig.add_trace(
            go.Scatter(
                x=curve.steps,
                y=curve.mean,
                mode="lines",
                line=dict(color=color, width=2.5),
                legendgroup=group,
                showlegend=where["legend"],
                name=name,
            ),
            **where["at"],
        )
    fig.update_layout(title=title, **{**_LAYOUT, "height": fig.layout.height or _LAYOUT["height"]})
    if not any(where["at"] for where in placed.values()):
        fig.update_layout(xaxis_title="optimizer step", yaxis_title=title)
    return fig


def final_figure(
    values: Mapping[str, np.ndarray],
    means: Mapping[str, Estimate],
    colors: Mapping[str, str],
    label: str,
    identity: Identity | None = None,
) -> go.Figure:
    """Per-seed final scores (dots) and the mean with its 95 % CI (bar) for each variant (a grid study:
    one panel per grid point)."""
    fig, placed = _plotly_facets(list(values), colors, identity)
    for variant, seeds in values.items():
        ci, where = means[variant], placed[variant]
        x = _text(where["name"])
        fig.add_trace(
            go.Scatter(
                x=[x] * len(seeds),
                y=seeds,
                mode="markers",
                opacity=0.5,
                legendgroup=where["name"],
                marker=dict(color=where["color"], size=8),
                showlegend=False,
                name=f"{_text(variant)} seeds",
            ),
            **where["at"],
        )
        fig.add_trace(
            go.Scatter(
                x=[x],
                y=[ci.estimate],
                mode="markers",
                name=x,
                legendgroup=where["name"],
                showlegend=where["legend"],
                marker=dict(color=where["color"], size=14, symbol="diamond"),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[np.nan_to_num(ci.high - ci.estimate)],
                    arrayminus=[np.nan_to_num(ci.estimate - ci.low)],
                ),
            ),
            **where["at"],
        )
    fig.update_layout(
        title=f"{label}: mean and 95 % CI over seeds", **{**_LAYOUT, "height": fig.layout.height or _LAYOUT["height"]}
    )
    if not any(where["at"] for where in placed.values()):
        fig.update_layout(yaxis_title=label)
    return fig


def cost_figure(frame: pd.DataFrame, columns: Sequence[str], colors: Mapping[str, str]) -> go.Figure:
    """One strip of per-trial values per cost column, grouped by variant."""
    fig = make_subplots(rows=1, cols=len(columns), subplot_titles=list(columns))
    for col, metric in enumerate(columns, start=1):
        for variant, group in frame.groupby("variant", sort=False):
            fig.add_trace(
                go.Box(
                    x=group["variant"].map(_text),
                    y=group[metric],
                    name=_text(variant),
                    boxpoints="all",
                    jitter=0.3,
                    marker_color=colors[variant],
                    legendgroup=variant,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_layout(title="cost per trial", **_LAYOUT)
    return fig


def scale_figure(frame: pd.DataFrame, columns: Sequence[str], colors: Mapping[str, str]) -> go.Figure:
    """Per-trial advantage scale and baseline (means over steps), one strip per column, by variant."""
    fig = cost_figure(frame, columns, colors)
    fig.update_layout(title="advantage scale and baseline per trial")
    return fig


def advantage_figure(samples: Mapping[str, np.ndarray], colors: Mapping[str, str]) -> go.Figure:
    """Overlaid normalised histograms of each variant's advantage sample."""
    fig = go.Figure()
    for variant, values in samples.items():
        fig.add_trace(
            go.Histogram(
                x=values,
                name=_text(variant),
                histnorm="probability density",
                opacity=0.55,
                marker_color=colors[variant],
                nbinsx=60,
            )
        )
    fig.update_layout(
        barmode="overlay", title="advantage distribution", xaxis_title="advantage", yaxis_title="density", **_LAYOUT
    )
    return fig


def search_figures(study: optuna.Study) -> list[tuple[str, go.Figure | str]]:
    """Optuna's own views of a search: history, importances, Q x R contour, group-size slice.

    A view that cannot be drawn comes back as a sentence saying why.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = {name for trial in complete for name in trial.params}
    views: list[tuple[str, go.Figure | str]] = [
        ("optimization history", optuna.visualization.plot_optimization_history(study)),
    ]
    varying = {n for n in params if len({t.params.get(n) for t in complete if n in t.params}) > 1}
    if len(complete) < 2 or not varying:
        views.append(("parameter importances", "needs at least two complete trials that vary a parameter"))
    else:
        views.append(("parameter importances", optuna.visualization.plot_param_importances(study)))
    if set(CONTOUR_PARAMS) <= params:
        views.append(
            (" x ".join(CONTOUR_PARAMS), optuna.visualization.plot_contour(study, params=list(CONTOUR_PARAMS)))
        )
    if SLICE_PARAM in params:
        views.append((SLICE_PARAM, optuna.visualization.plot_slice(study, params=[SLICE_PARAM])))
    for _, view in views:
        if isinstance(view, go.Figure):
            view.update_layout(height=450)
    return views


def _facets(labels: Sequence[str], ident: Identity) -> dict[str, list[str]]:
    """Labels by grid point, in first-seen order (one entry, ``""``, in a study without a grid)."""
    points: dict[str, list[str]] = {}
    for label in labels:
        points.setdefault(ident[label][1], []).append(label)
    return points


def _panels(n: int, width: float, height: float) -> tuple[Figure, list[Any]]:
    """A constrained figure of ``n`` panels, at most three a row, sharing the y axis."""
    n = max(1, n)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.8), dpi=120, layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _grid_colors(labels: Sequence[str], colors: Mapping[str, str], ident: Identity) -> dict[str, str]:
    """In a grid study, one colour per variant across every grid point; else the report's colours."""
    if not any(ident[label][1] for label in labels):
        return dict(colors)
    variants = palette(list(dict.fromkeys(ident[label][0] for label in labels)))
    return {label: variants[ident[label][0]] for label in labels}


def curves_png(
    curves: Mapping[str, Curve], path: Path, title: str, colors: Mapping[str, str], identity: Identity | None = None
) -> Path:
    """Static version of `curve_figure`; a grid study gets one panel per grid point."""
    ident = _identities(list(curves), identity)
    facets = _facets(list(curves), ident)
    colors = _grid_colors(list(curves), colors, ident)
    fig, axes = _panels(len(facets), 8.0 if len(facets) == 1 else 5.0, 4.5 if len(facets) == 1 else 3.4)
    for ax, (point, labels) in zip(axes, facets.items()):
        for label in labels:
            curve, color = curves[label], colors[label]
            for _, series in curve.per_seed.items():
                points = series.dropna()
                ax.plot(points.index, points.to_numpy(), color=color, alpha=0.2, linewidth=0.8)
            ax.fill_between(curve.steps, curve.low, curve.high, color=color, alpha=0.2, linewidth=0)
            name = ident[label][0] if point else label
            ax.plot(curve.steps, curve.mean, color=color, linewidth=2, label=f"{name} (n={curve.per_seed.shape[1]})")
        ax.set(title=point or None, xlabel="optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set(ylabel=title)
    fig.suptitle(f"{title}: mean and 95 % bootstrap band over seeds")
    if len(facets) == 1:
        axes[0].legend(frameon=False)
    else:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(6, len(names)), frameon=False)
    fig.savefig(path)
    return path


def final_png(
    values: Mapping[str, np.ndarray],
    means: Mapping[str, Estimate],
    path: Path,
    colors: Mapping[str, str],
    label: str,
    identity: Identity | None = None,
) -> Path:
    """Static version of `final_figure`; a grid study gets one panel per grid point."""
    ident = _identities(list(values), identity)
    facets = _facets(list(values), ident)
    colors = _grid_colors(list(values), colors, ident)
    widest = max((len(labels) for labels in facets.values()), default=1)
    fig, axes = _panels(
        len(facets), max(4.0, 1.4 * widest + 2) if len(facets) == 1 else max(4.0, 0.9 * widest + 1), 4.5
    )
    rng = np.random.default_rng(0)
    for ax, (point, labels) in zip(axes, facets.items()):
        for i, name in enumerate(labels):
            seeds, ci = values[name], means[name]
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(seeds)), seeds, color=colors[name], alpha=0.5, s=22)
            err = [[np.nan_to_num(ci.estimate - ci.low)], [np.nan_to_num(ci.high - ci.estimate)]]
            ax.errorbar([i + 0.3], [ci.estimate], yerr=err, fmt="D", color=colors[name], capsize=6, markersize=7)
        ticks = [f"{ident[n][0] if point else n}\n(n={len(values[n])})" for n in labels]
        ax.set_xticks(range(len(labels)), ticks, rotation=30 if point and widest > 3 else 0)
        ax.set(title=point or None)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set(ylabel=label)
    fig.suptitle(f"{label}: seeds, mean and 95 % CI")
    fig.savefig(path)
    return path
