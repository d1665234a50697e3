"""Trial records: what the analysis reads of one finished (or unfinished) trial, from either store.

A record carries the variant and the grid point as data: jobs hold them in their config
(``variant_name``, ``grid_point``), MLflow runs as tags (``krpo.variant_name``, ``krpo.grid_point``
as JSON). Rows and runs written by older releases lack them: `legacy_identity` is the one place that
reads them back from the display label.
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
