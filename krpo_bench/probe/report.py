"""The probe's report: a table (HTML, CSV, JSON) and a figure (cosine against group size per estimator)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from krpo_bench.probe.spec import ProbeSpec

COLUMNS = (
    ("estimator", "estimator", "{}"),
    ("group_size", "G", "{}"),
    ("cos_mean", "cos (one batch)", "{:.3f}"),
    ("cos_ci", "95 % CI (batches + ref)", "{}"),
    ("cos_diff", "Δcos paired [95 % CI, batches + ref]", "{}"),
    ("cos_diff_p", "p", "{}"),
    ("cos_diff_p_holm", "p Holm (* < 0.05)", "{}"),
    ("cos_of_mean", "cos (mean grad)", "{:.3f}"),
    ("cos_expected", "cos (E grad)", "{:.3f}"),
    ("var_trace", "tr Var", "{:.3g}"),
    ("snr", "SNR", "{:.3g}"),
    ("adv_rms", "adv RMS", "{:.3g}"),
    ("zero_grad_frac", "zero grad", "{:.2f}"),
)
NAME_COLUMNS = ("estimator",)
"""Columns that hold names: a console shows them whole (folded, never cut)."""
MISSING = "n/a"
FAMILY_ALPHA = 0.05
"""Family-wise error rate at which a Holm-adjusted Δcos counts as surviving (the table's *)."""


def survives(row: dict[str, Any], alpha: float = FAMILY_ALPHA) -> bool:
    """Whether the row's Δcos differs from 0 after Holm's adjustment over the probe's family."""
    return row.get("cos_diff_p_holm", math.nan) < alpha


def _defined(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _interval(low: Any, high: Any, fmt: str) -> str:
    return f"[{fmt.format(low)}, {fmt.format(high)}]" if _defined(low, high) else MISSING


def _p_value(p: Any) -> str:
    return f"{p:.3g}" if _defined(p) else MISSING


def table_cells(row: dict[str, Any]) -> list[str]:
    """The printed cells of one (estimator, group size) row, in ``COLUMNS`` order; a statistic the
    row does not hold (a row stored by an older release) reads n/a."""
    compared = row["estimator"] != row["versus"]
    paired = (
        f"{row['cos_diff']:+.3f} {_interval(row.get('cos_diff_ci_low'), row.get('cos_diff_ci_high'), '{:+.3f}')}"
        if compared
        else f"vs {row['versus']}"
    )
    holm = _p_value(row.get("cos_diff_p_holm")) + (" *" if survives(row) else "")
    values = {
        **row,
        "cos_ci": _interval(row.get("cos_ci_low"), row.get("cos_ci_high"), "{:.3f}"),
        "cos_diff": paired,
        "cos_diff_p": _p_value(row.get("cos_diff_p")) if compared else "—",
        "cos_diff_p_holm": holm if compared else "—",
    }
    return [fmt.format(values[key]) for key, _, fmt in COLUMNS]


def line_styles(names: list[str]) -> dict[str, dict[str, str]]:
    """A matplotlib style per estimator, no two alike: the 10 tab10 colours, then the same colours with
    another marker and line style (a zoo has more estimators than a colour cycle has colours)."""
    markers, lines = ("o", "s", "^", "D"), ("-", "--", ":", "-.")
    return {
        name: {"color": f"C{index % 10}", "marker": markers[index // 10 % 4], "linestyle": lines[index // 10 % 4]}
        for index, name in enumerate(names)
    }


def _errors(means: list[float], lows: list[float], highs: list[float]) -> list[list[float]]:
    return [[m - low for m, low in zip(means, lows)], [high - m for m, high in zip(means, highs)]]


def figure_png(rows: list[dict[str, Any]]) -> bytes:
    """Three panels against group size per estimator: the mean one-batch cosine with its 95 % CI, the
    paired Δcos from the comparison estimator with its 95 % CI (filled marker: it survives Holm's
    adjustment over the table), both intervals over batches and reference; and the cosine of the
    mean gradient over the batches."""
    fig = Figure(figsize=(17, 4.2), dpi=110)
    one, paired, bias = fig.subplots(1, 3)
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    styles = line_styles(names)
    nan = math.nan
    for index, name in enumerate(names):
        mine = sorted((r for r in rows if r["estimator"] == name), key=lambda r: r["group_size"])
        dodge = 2 ** (0.04 * (index - (len(names) - 1) / 2))  # side by side, so the intervals stay readable
        sizes = [r["group_size"] * dodge for r in mine]
        means = [r["cos_mean"] for r in mine]
        lows, highs = [r.get("cos_ci_low", nan) for r in mine], [r.get("cos_ci_high", nan) for r in mine]
        one.errorbar(sizes, means, yerr=_errors(means, lows, highs), capsize=3, label=name, **styles[name])
        bias.plot(sizes, [r["cos_of_mean"] for r in mine], label=name, **styles[name])
        compared = [r for r in mine if r.get("versus", name) != name and "cos_diff" in r]
        if compared:
            at = [r["group_size"] * dodge for r in compared]
            diffs = [r["cos_diff"] for r in compared]
            errors = _errors(
                diffs,
                [r.get("cos_diff_ci_low", nan) for r in compared],
                [r.get("cos_diff_ci_high", nan) for r in compared],
            )
            look = styles[name]
            paired.errorbar(
                at, diffs, yerr=errors, capsize=3, color=look["color"], linestyle=look["linestyle"], marker="none"
            )
            kept = [survives(r) for r in compared]
            paired.scatter(
                at,
                diffs,
                marker=look["marker"],
                edgecolors=look["color"],
                zorder=3,
                facecolors=[look["color"] if k else "white" for k in kept],
            )
    versus = next((r["versus"] for r in rows if "versus" in r), "the comparison estimator")
    titles = (
        (one, "one-batch gradient vs reference (mean, 95 % CI: batches + reference)", "cosine"),
        (paired, f"Δcos vs {versus} (95 % CI: batches + reference; filled: survives Holm)", "Δcos"),
        (bias, "mean of the one-batch gradients vs reference", "cosine"),
    )
    for ax, title, label in titles:
        ax.set_xscale("log", base=2)
        sizes = sorted({r["group_size"] for r in rows})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("group size G")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    paired.axhline(0.0, color="black", linewidth=0.8)
    bias.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the panel, never over its lines
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(spec: ProbeSpec, result: Any, folder: Path) -> Path:
    """Write ``probe.json``, ``probe.csv``, ``probe.png`` and a self-contained ``index.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"spec": spec.model_dump(mode="json"), **result.to_json()}
    (folder / "probe.json").write_text(json.dumps(data, indent=2))
    with open(folder / "probe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.rows[0]))
        writer.writeheader()
        writer.writerows(result.rows)
    png = figure_png(result.rows)
    (folder / "probe.png").write_bytes(png)
    (folder / "index.html").write_text(report_html(spec, result, png))
    return folder / "index.html"


def weights_note(spec: ProbeSpec, result: Any) -> str:
    """Where the probed weights came from, after the model's name: the warm start, a checkpoint
    folder, or a trial's checkpoint with the trial id it resolved to."""
    if spec.checkpoint is None:
        return " (warm start)"
    if isinstance(spec.checkpoint, str):
        return f" at {spec.checkpoint}"
    source = getattr(result, "checkpoint_source", None)
    trial = f" (trial {source['trial_id']}, checkpoint-{source['step']})" if source else ""
    return f" at the checkpoint of {spec.checkpoint.describe()}{trial}"


def family_size(rows: list[dict[str, Any]]) -> int:
    """Comparisons in the probe's Holm family: the rows with a Δcos test."""
    return sum(1 for row in rows if _defined(row.get("cos_diff_p")))


def interval_note(result: Any) -> str:
    """What the table's 95 % intervals cover, for this result."""
    if not result.reference_blocks:
        return (
            "Intervals: t-intervals over the batches alone, the reference held fixed (stored by an older release: "
            "the intervals over batches and reference were not measured and read n/a)."
        )
    return (
        f"Intervals (95 %) cover both sources of noise: the {result.reference_blocks} leave-one-block-out references "
        f"(the reference's prompts in {result.reference_blocks} disjoint blocks) give the reference's variance by the "
        "jackknife, the batches give theirs (s²/M); the interval is mean ± t sqrt(sum), df by Welch-Satterthwaite and "
        "at most M - 1, so it always holds the batches-only interval (the reference held fixed). "
        "It estimates the cosine to a reference of this size, averaged over the batches and the reference's draws."
    )


def report_html(spec: ProbeSpec, result: Any, png: bytes | None = None) -> str:
    """The report as one self-contained page: the figure (``png``, drawn here when not given) and the table."""
    png = figure_png(result.rows) if png is None else png
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in table_cells(row)) + "</tr>" for row in result.rows
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>krpo-bench probe · {html.escape(spec.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}} td:first-child{{text-align:left}}
.meta{{color:#555}}</style></head><body>
<h1>Gradient-quality probe: {html.escape(spec.name)}</h1>
<p class="meta">{html.escape(spec.description)}</p>
<p class="meta">model {html.escape(spec.model.name)}{html.escape(weights_note(spec, result))};
{spec.batches} batches of {spec.prompts_per_batch} prompts shared by every estimator (common random numbers; a smaller G
uses the first G rollouts of each group); reference: rloo baseline, no std scaling, {spec.reference.prompts} prompts x
{spec.reference.group_size} rollouts (split-half cosine {result.reference_split_cosine:.3f}, mean reward
{result.reference_reward_mean:.3f}); loss {spec.loss_type}: {html.escape(result.length_normalisation)};
wall time {result.wall_time_s:.1f} s; MLflow run {html.escape(result.mlflow_run_id or "none")}.</p>
<p class="meta">cos (one batch): cosine of one batch's gradient to the reference (bias and variance together; a zero
gradient counts as 0). Δcos paired: its difference from the comparison estimator's one-batch cosine on the same
batches (common random numbers). {html.escape(interval_note(result))} p: the two-sided test of Δcos = 0 with the
same standard error; p Holm: adjusted by Holm over the {family_size(result.rows)} Δcos comparisons of this table
(estimators x group sizes); * marks those below 0.05 after adjustment (filled markers in the figure). The
CSV/JSON also hold the batches-only intervals (cos_batch_ci_*, cos_diff_batch_ci_*: the reference held fixed) and
the two standard errors. cos (mean grad): cosine of the mean over the batches (it still carries the mean's own noise). cos (E grad):
the estimator's bias alone, mean . ref / (|E g| |ref|) with |E g|<sup>2</sup> estimated without bias: a ratio
estimate that is itself noisy (above 1, or nan, when the batches do not resolve E g: the SNR is too low for M); the reference's own noise (split-half cosine) lowers every cosine a little. tr Var: trace of the one-batch gradient covariance. SNR: |E g|<sup>2</sup> / tr Var (|E g|<sup>2</sup> estimated
without bias). adv RMS: root mean square of the advantages.</p>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="cosine against group size" width="100%">
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"""
