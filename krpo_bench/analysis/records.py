"""Trial records: what the analysis reads of one finished (or unfinished) trial, from either store.

A record carries the variant and the grid point as data: jobs hold them in their config
(``variant_name``, ``grid_point``), MLflow runs as tags (``krpo.variant_name``, ``krpo.grid_point``
as JSON). Rows and runs written by older releases lack them: `legacy_identity` is the one place that
reads them back from the display label. A published summary.json (`records_from_summary`) holds
each variant group's per-seed values of the primary metric, in either schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from krpo_bench import tags as krpo_tags
from krpo_bench.analysis.model import GridPoint
from krpo_bench.spec.study import split_label

if TYPE_CHECKING:
    import pandas as pd

    from krpo_bench.dashboards.source import StudyData
    from krpo_bench.service.queue import JobInfo

CONFIG_VARIANT_NAME = "variant_name"
CONFIG_GRID_POINT = "grid_point"
RECORD_CONFIG_KEYS = ("variant", "seed", CONFIG_VARIANT_NAME, CONFIG_GRID_POINT)
"""The keys of a job's config a record reads (a read of the jobs table may select only these)."""
ITEM_OUTCOMES = "final_item_outcomes"
SUCCEEDED = "succeeded"
_LEGACY_PART = re.compile(r" (?=[A-Za-z_]\w*=)")
JOB_METRICS = {
    "final_accuracy": "final/accuracy",
    "final_pass_at_k": "final/pass_at_k",
    "initial_accuracy": "final/initial_accuracy",
    "train_reward_auc": "final/train_reward_auc",
    "wall_time_s": "cost/wall_time_s",
    "mean_step_time_s": "cost/mean_step_time_s",
    "tokens": "cost/tokens",
}
"""A job result's keys and the MLflow metric names the analysis reads them under."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its variant, grid point and display label, seed, final metrics (MLflow names:
    ``final/accuracy``, ``final/initial_accuracy``, ``cost/...``; empty while unfinished), its 0/1
    outcome per test item (test-set order) where the trial reported them, and step curves."""

    variant: str
    grid_point: GridPoint
    label: str
    seed: int | None
    metrics: dict[str, float]
    item_outcomes: tuple[int, ...] | None = None
    curves: Mapping[str, pd.Series] | None = None


def grid_point_of(pairs: Iterable[Iterable[Any]]) -> GridPoint:
    """A grid point from JSON-ish (path, value) pairs."""
    return tuple((str(path), value) for path, value in pairs)


def legacy_identity(label: str) -> tuple[str, GridPoint]:
    """(variant, grid point) of a job or run stored before they were recorded as data (legacy only).

    Read back from the display label `StudySpec.plan` wrote (``"krpo group_size=2"``) by `split_label`:
    the grid point's paths are the last parts of the dotted paths and its values their text, which
    groups and matches the trials of one study as the data would.
    """
    variant, point = split_label(label)
    parts = _LEGACY_PART.split(point) if point else []
    return variant, tuple((name, value) for name, value in (part.split("=", 1) for part in parts))


def _field(data: Any, key: str, where: str) -> Any:
    """``data[key]``; a ValueError naming ``where`` and the key when it is missing."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} is not a JSON object")
    if key not in data:
        raise ValueError(f"{where} has no {key!r}")
    return data[key]


def _list(data: Any, key: str, where: str) -> list[Any]:
    value = _field(data, key, where)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key!r} is not a list")
    return value


def records_from_summary(data: Mapping[str, Any]) -> list[TrialRecord]:
    """One record per (variant group, seed, value) of the primary metric (``metric``) that a report's
    summary.json holds, in either schema: this release's (each of ``variants`` stores its ``variant``,
    ``grid_point`` and ``label``) or an older one's (``variant`` is the display label, read back by
    `legacy_identity`). Nothing else is stored per seed, so the records carry that one metric. A
    ValueError names a missing key (``summary has no 'metric'``, ``variants[2] has no 'seeds'``)."""
    metric = _field(data, "metric", "summary")
    records = []
    for i, entry in enumerate(_list(data, "variants", "summary")):
        where = f"variants[{i}]"
        seeds, values = _list(entry, "seeds", where), _list(entry, "values", where)
        if len(seeds) != len(values):
            raise ValueError(f"{where}: {len(seeds)} seeds but {len(values)} values")
        if "label" in entry:
            label = entry["label"]
            variant, point = _field(entry, "variant", where), grid_point_of(entry.get("grid_point") or ())
        else:
            label = _field(entry, "variant", where)
            variant, point = legacy_identity(label)
        records += [
            TrialRecord(variant, point, label, seed, {metric: float(value)} if value is not None else {})
            for seed, value in zip(seeds, values)
        ]
    return records


def summary_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The `AnalysisSettings` fields a summary.json recorded: reference, metric, confidence, target
    effect, the bootstrap's resamples and seed, and (this release's schema) the equivalence margin;
    no secondary metrics (a summary stores no per-seed values of them). A ValueError names a missing key."""
    fields = {
        "reference": _field(data, "reference", "summary"),
        "metric": _field(data, "metric", "summary"),
        "confidence": _field(data, "confidence", "summary"),
        "target_effect": _field(data, "target_effect", "summary"),
        "secondary_metrics": (),
    }
    stored = {"n_bootstrap": "n_resamples", "bootstrap_seed": "seed", "margin": "equivalence_margin"}
    return fields | {name: data[key] for key, name in stored.items() if data.get(key) is not None}


def summary_order_pairs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (shuffled label, unshuffled twin label) order checks a summary.json holds: ``order_checks``
    (this release's schema) or ``order_sensitivity`` (an older one's)."""
    key, shuffled, twin = (
        ("order_checks", "label", "reference_label")
        if "order_checks" in data
        else ("order_sensitivity", "variant", "twin")
    )
    checks = _list(data, key, "summary") if key in data else []
    return [(_field(c, shuffled, f"{key}[{i}]"), _field(c, twin, f"{key}[{i}]")) for i, c in enumerate(checks)]


def records_from_jobs(jobs: Iterable[JobInfo]) -> list[TrialRecord]:
    """One record per job (jobs table: ``job.config`` + ``job.result``); metrics only from succeeded jobs."""
    records = []
    for job in jobs:
        config = job.config
        if config.get(CONFIG_VARIANT_NAME) is not None:
            variant, point = config[CONFIG_VARIANT_NAME], grid_point_of(config.get(CONFIG_GRID_POINT) or ())
        else:
            variant, point = legacy_identity(config["variant"])
        result = job.result if job.status == SUCCEEDED and job.result else {}
        metrics = {name: float(result[key]) for key, name in JOB_METRICS.items() if result.get(key) is not None}
        outcomes = result.get(ITEM_OUTCOMES)
        records.append(
            TrialRecord(
                variant,
                point,
                config["variant"],
                config.get("seed"),
                metrics,
                tuple(int(c) for c in outcomes) if outcomes is not None else None,
            )
        )
    return records


def records_from_runs(study: StudyData) -> list[TrialRecord]:
    """One record per finished MLflow run of the study (dashboards/source.py), in its run order."""
    records = []
    for run in study.runs:
        if krpo_tags.VARIANT_NAME in run.tags:
            variant, point = (
                run.tags[krpo_tags.VARIANT_NAME],
                grid_point_of(json.loads(run.tags.get(krpo_tags.GRID_POINT, "[]"))),
            )
        else:
            variant, point = legacy_identity(run.variant)
        outcomes = tuple(int(c) for c in run.item_outcomes) if run.item_outcomes is not None else None
        records.append(TrialRecord(variant, point, run.variant, run.seed, dict(run.final), outcomes, run.histories))
    return records
