"""A thin MLflow adapter for one trial run: create or continue it, log params, metrics, files."""

from __future__ import annotations

import time
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from krpo_bench.settings import default_artifact_root, default_mlflow_uri

MAX_BATCH = 1000  # MLflow's log_batch limit on metrics


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``; local stores keep artifacts under the data home."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:") or "://" not in tracking_uri:
        location = f"{default_artifact_root()}/{name}"
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class RunTracker:
    """One MLflow run, created fresh or continued by id."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri or default_mlflow_uri()
        self.client = MlflowClient(self.tracking_uri)
        self.run_id: str | None = None

    def start(
        self,
        experiment: str,
        run_name: str,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Continue ``run_id`` when given, else create a run (child of ``parent_run_id``)."""
        if run_id:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.run_id = run_id
            return run_id
        all_tags = {MLFLOW_RUN_NAME: run_name, **(tags or {})}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        experiment_id = get_or_create_experiment(self.client, experiment, self.tracking_uri)
        self.run_id = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params not logged yet (a continued run keeps its original values)."""
        logged = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        for i in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + MAX_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_dict(self, obj: Any, path: str) -> None:
        self.client.log_dict(self.run_id, obj, path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
