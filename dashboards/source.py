"""Read one study's trial runs from MLflow (read only)."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from krpo_bench import tags as krpo_tags

FINISHED = "FINISHED"
SHUFFLE_PARAM = "estimator.shuffle_order"
FINAL_PREFIXES = ("final/", "cost/")
CURVE_METRICS: tuple[str, ...] = (
    "eval/accuracy",
    "eval/pass_at_k",
    "train/reward",
    "train/reward_std",
    "train/completion_length",
    "train/step_time_s",
    "train/loss",
    "train/kl",
    "adv/mean",
    "adv/std",
    "adv/abs_max",
    "adv/baseline_mean",
    "adv/scale_mean",
    "adv/frac_zero_std",
    "adv/kalman_gain_last",
    "adv/posterior_std_last",
)
_PAGE = 1000
_HISTORY_WORKERS = 8


@dataclass
class RunData:
    """One trial run: identity, configuration, final metrics, step histories, advantage sample."""

    run_id: str
    variant: str
    seed: int | None
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    final: dict[str, float]
    histories: dict[str, pd.Series] = field(default_factory=dict)
    advantages: np.ndarray | None = None
    item_outcomes: str | None = None
    """The final evaluation's 0/1 outcome per test item ("0"/"1" characters, test-set order), where logged."""

    @property
    def shuffled(self) -> bool:
        """Whether this run's estimator saw the groups in shuffled order."""
        return self.params.get(SHUFFLE_PARAM, "").lower() == "true"


@dataclass
class StudyData:
    """The finished trials of a study, plus how many trials are in each status."""

    study_id: str | None
    study_name: str | None
    experiment_ids: list[str]
    runs: list[RunData]
    status_counts: dict[str, int]

    @property
    def variants(self) -> list[str]:
        """Variant names in order of first appearance."""
        return list(dict.fromkeys(run.variant for run in self.runs))

    def runs_of(self, variant: str) -> list[RunData]:
        """The finished runs of one variant, by seed."""
        return sorted((r for r in self.runs if r.variant == variant), key=lambda r: (r.seed is None, r.seed))

    def frame(self) -> pd.DataFrame:
        """One row per finished run: ids, variant, seed, final metrics and `params.*` columns."""
        rows = [
            {
                "run_id": r.run_id,
                "variant": r.variant,
                "seed": r.seed,
                "status": r.status,
                **r.final,
                **{f"params.{k}": v for k, v in r.params.items()},
            }
            for r in self.runs
        ]
        return pd.DataFrame(rows, columns=None if rows else ["run_id", "variant", "seed", "status"])


def _seed(run: Run) -> int | None:
    raw = run.data.tags.get(krpo_tags.SEED, run.data.params.get("training.seed"))
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    series = pd.Series([m.value for m in points], index=[m.step for m in points], name=key, dtype=float)
    return series[~series.index.duplicated(keep="last")]


def _artifact_json(client: MlflowClient, run_id: str, artifact: str) -> Any:
    """A run's JSON artifact, or None when the run has none by that name."""
    folder, _, name = artifact.rpartition("/")
    if not any(Path(f.path).name == name for f in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, artifact, tmp)).read_text())


def _advantages(client: MlflowClient, run_id: str) -> np.ndarray | None:
    sample = _artifact_json(client, run_id, krpo_tags.ADVANTAGES_ARTIFACT)
    return None if sample is None else np.asarray(sample.get("values", []), dtype=float)


def _item_outcomes(client: MlflowClient, run_id: str) -> str | None:
    evaluations = _artifact_json(client, run_id, krpo_tags.ITEM_OUTCOMES_ARTIFACT)
    return ((evaluations or {}).get("final") or {}).get("outcomes")


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is None:
        ids, token = [], None
        while True:
            page = client.search_experiments(max_results=_PAGE, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids
    found = client.get_experiment_by_name(experiment)
    return [found.experiment_id if found is not None else client.get_experiment(experiment).experiment_id]


def _search(client: MlflowClient, experiment_ids: list[str], study_id: str | None) -> list[Run]:
    if study_id is not None and "'" in study_id:
        raise ValueError(f"study id may not contain a quote: {study_id!r}")
    query = f"tags.`{krpo_tags.STUDY_ID}` = '{study_id}'" if study_id is not None else ""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=_PAGE, page_token=token)
        runs += page
        token = page.token
        if not token:
            return [r for r in runs if krpo_tags.VARIANT in r.data.tags]


def load_study(
    tracking_uri: str,
    study_id: str | None = None,
    experiment: str | None = None,
    metrics: Sequence[str] = CURVE_METRICS,
    advantages: bool = True,
) -> StudyData:
    """Load a study's trial runs (child runs tagged `krpo.variant`) from an MLflow tracking store.

    Give `study_id` (matched on the `krpo.study_id` tag), `experiment` (name or id), or both.
    Unfinished runs are only counted. Step histories are fetched for `metrics` that a finished run
    actually logged; the advantage sample is read when the run has the artifact.
    """
    if study_id is None and experiment is None:
        raise ValueError("give a study_id, an experiment, or both")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per trial's sample is noise
    client = MlflowClient(tracking_uri)
    experiment_ids = _experiment_ids(client, experiment)
    found = _search(client, experiment_ids, study_id) if experiment_ids else []
    finished = [r for r in found if r.info.status == FINISHED]
    jobs = [(r.info.run_id, key) for r in finished for key in metrics if key in r.data.metrics]
    with ThreadPoolExecutor(_HISTORY_WORKERS) as pool:
        series = list(pool.map(lambda job: _history(client, *job), jobs))
        samples = list(pool.map(lambda r: _advantages(client, r.info.run_id), finished if advantages else []))
        outcomes = list(pool.map(lambda r: _item_outcomes(client, r.info.run_id), finished))
    histories: dict[str, dict[str, pd.Series]] = {}
    for (run_id, key), s in zip(jobs, series):
        histories.setdefault(run_id, {})[key] = s
    runs = [
        RunData(
            run_id=r.info.run_id,
            variant=r.data.tags[krpo_tags.VARIANT],
            seed=_seed(r),
            status=r.info.status,
            params=dict(r.data.params),
            tags=dict(r.data.tags),
            final={k: v for k, v in r.data.metrics.items() if k.startswith(FINAL_PREFIXES)},
            histories=histories.get(r.info.run_id, {}),
            advantages=samples[i] if advantages else None,
            item_outcomes=outcomes[i],
        )
        for i, r in enumerate(finished)
    ]
    first = found[0].data.tags if found else {}
    return StudyData(
        study_id=study_id if study_id is not None else first.get(krpo_tags.STUDY_ID),
        study_name=first.get(krpo_tags.STUDY_NAME),
        experiment_ids=experiment_ids,
        runs=sorted(runs, key=lambda r: (r.variant, r.seed is None, r.seed)),
        status_counts=dict(Counter(r.info.status for r in found)),
    )
