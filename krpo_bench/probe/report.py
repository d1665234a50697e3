"""The probe's report: a table (HTML, CSV, JSON) and a figure (cosine against group size per estimator)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from krpo_bench.probe.spec import ProbeSpec

COLUMNS = (
    ("estimator", "estimator", "{}"),
    ("group_size", "G", "{}"),
    ("cos_mean", "cos (one batch)", "{:.3f}"),
    ("cos_ci", "95 % CI", "{}"),
    ("cos_diff", "Δcos paired [95 % CI]", "{}"),
    ("cos_of_mean", "cos (mean grad)", "{:.3f}"),
    ("cos_expected", "cos (E grad)", "{:.3f}"),
    ("var_trace", "tr Var", "{:.3g}"),
    ("snr", "SNR", "{:.3g}"),
    ("adv_rms", "adv RMS", "{:.3g}"),
    ("zero_grad_frac", "zero grad", "{:.2f}"),
)
NAME_COLUMNS = ("estimator",)
"""Columns that hold names: a console shows them whole (folded, never cut)."""


def table_cells(row: dict[str, Any]) -> list[str]:
    """The printed cells of one (estimator, group size) row, in ``COLUMNS`` order."""
    paired = (
        f"{row['cos_diff']:+.3f} [{row['cos_diff_ci_low']:+.3f}, {row['cos_diff_ci_high']:+.3f}]"
        if row["estimator"] != row["versus"] else f"vs {row['versus']}"
    )
    values = {**row, "cos_ci": f"[{row['cos_ci_low']:.3f}, {row['cos_ci_high']:.3f}]", "cos_diff": paired}
    return [fmt.format(values[key]) for key, _, fmt in COLUMNS]


def line_styles(names: list[str]) -> dict[str, dict[str, str]]:
    """A matplotlib style per estimator, no two alike: the 10 tab10 colours, then the same colours with
    another marker and line style (a zoo has more estimators than a colour cycle has colours)."""
    markers, lines = ("o", "s", "^", "D"), ("-", "--", ":", "-.")
    return {
        name: {"color": f"C{index % 10}", "marker": markers[index // 10 % 4], "linestyle": lines[index // 10 % 4]}
        for index, name in enumerate(names)
    }


def figure_png(rows: list[dict[str, Any]]) -> bytes:
    """Two panels against group size per estimator: the mean one-batch cosine with its 95 % CI, and
    the cosine of the mean gradient over the batches."""
    fig = Figure(figsize=(12.5, 4.2), dpi=110)
    one, bias = fig.subplots(1, 2)
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    styles = line_styles(names)
    for index, name in enumerate(names):
        mine = sorted((r for r in rows if r["estimator"] == name), key=lambda r: r["group_size"])
        dodge = 2 ** (0.04 * (index - (len(names) - 1) / 2))  # side by side, so the intervals stay readable
        sizes = [r["group_size"] * dodge for r in mine]
        means = [r["cos_mean"] for r in mine]
        errors = [[m - r["cos_ci_low"] for m, r in zip(means, mine)], [r["cos_ci_high"] - m for m, r in zip(means, mine)]]
        one.errorbar(sizes, means, yerr=errors, capsize=3, label=name, **styles[name])
        bias.plot(sizes, [r["cos_of_mean"] for r in mine], label=name, **styles[name])
    for ax, title in ((one, "one-batch gradient vs reference (mean, 95 % CI)"), (bias, "mean of the one-batch gradients vs reference")):
        ax.set_xscale("log", base=2)
        sizes = sorted({r["group_size"] for r in rows})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("group size G")
        ax.set_ylabel("cosine")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
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
<p class="meta">model {html.escape(spec.model.name)}{' at ' + html.escape(spec.checkpoint) if spec.checkpoint else ' (warm start)'};
{spec.batches} batches of {spec.prompts_per_batch} prompts shared by every estimator (common random numbers; a smaller G
uses the first G rollouts of each group); reference: rloo baseline, no std scaling, {spec.reference.prompts} prompts x
{spec.reference.group_size} rollouts (split-half cosine {result.reference_split_cosine:.3f}, mean reward
{result.reference_reward_mean:.3f}); loss {spec.loss_type}: {html.escape(result.length_normalisation)};
wall time {result.wall_time_s:.1f} s; MLflow run {html.escape(result.mlflow_run_id or 'none')}.</p>
<p class="meta">cos (one batch): cosine of one batch's gradient to the reference (bias and variance together; a zero
gradient counts as 0). Δcos paired: its difference from the comparison estimator's one-batch cosine on the same
batches (common random numbers), mean and t-interval over the batches. cos (mean grad): cosine of the mean over the batches (it still carries the mean's own noise). cos (E grad):
the estimator's bias alone, mean . ref / (|E g| |ref|) with |E g|<sup>2</sup> estimated without bias: a ratio
estimate that is itself noisy (above 1, or nan, when the batches do not resolve E g: the SNR is too low for M); the reference's own noise (split-half cosine) lowers every cosine a little. tr Var: trace of the one-batch gradient covariance. SNR: |E g|<sup>2</sup> / tr Var (|E g|<sup>2</sup> estimated
without bias). adv RMS: root mean square of the advantages.</p>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="cosine against group size" width="100%">
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"""
