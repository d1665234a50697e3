"""A study's MLflow records as an outbox: the experiment and parent run, created after submission.

A submission commits the study row and its jobs only and marks it ``mlflow_pending``;
:meth:`MlflowOutbox.ensure` fulfils that idempotently afterwards (the API's background task, a
worker before it starts one of the study's trials, and ``krpo-bench run`` all call it through
:meth:`StudyService.ensure_mlflow`), looking up what a predecessor that died half-way created (the
experiment by name, the parent run by tag) before creating anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from krpo_bench import tags as krpo_tags
from krpo_bench.service.db import ALEMBIC_LOCK, StudyStatus
from krpo_bench.service.kinds import stored_spec

if TYPE_CHECKING:
    from krpo_bench.service.studies import StudyService

log = logging.getLogger(__name__)
PARENT_RUN_STATUS = {StudyStatus.SUCCEEDED: "FINISHED", StudyStatus.FAILED: "FAILED", StudyStatus.CANCELLED: "KILLED"}
STUDY_RUN_ROLE = "study"
"""``krpo.role`` tag of a study's MLflow parent run (how a restarted creator finds it)."""

EXPERIMENT_ID_CHARS = 13
"""Characters of the study id an experiment's name shows: the first 12 hex digits of the UUID (all
random in a version-4 UUID: 48 bits), so two studies of one name never share an experiment in
practice, and the shown part is an id prefix the CLI and the API accept."""


@dataclass(frozen=True)
class MlflowRecords:
    """A study's MLflow experiment and parent run."""

    experiment_id: str
    parent_run_id: str


def experiment_name(study_id: str, study_name: str) -> str:
    """The MLflow experiment of a study: its display name and a short id, ``quickstart (0b8c2f6e-5b1a)``,
    so a person recognises it in the MLflow UI. Local artifact folders are never named after it
    (``tracking.artifact_folder`` hashes any name that is not a plain identifier). Studies stored by
    an older release keep their ``krpo-study-<id>`` experiment (the study row holds its id, every
    run its ``krpo.study_id`` tag)."""
    return f"{study_name} ({study_id[:EXPERIMENT_ID_CHARS]})"


class MlflowOutbox:
    """The MLflow experiment and parent run of the studies of one :class:`StudyService`."""

    def __init__(self, service: StudyService) -> None:
        self.service = service

    def pending(self, limit: int = 100) -> list[str]:
        """Ids of studies whose MLflow records are still to be created, oldest first."""
        return self.service.rows.pending_mlflow(limit)

    def ensure(self, study_id: str) -> MlflowRecords:
        """The study's MLflow experiment (:func:`experiment_name`) and parent run, created exactly once.

        Idempotent and safe against a creator that died half-way: under the study lock, the
        experiment is looked up by name and the parent run by its ``krpo.role``/``krpo.study_id``
        tags before anything is created; the ids are then stored on the study row."""
        row = self.service._row(study_id)
        if not row.mlflow_pending:
            return MlflowRecords(row.mlflow_experiment_id, row.mlflow_parent_run_id)
        from krpo_bench.tracking import RunTracker, flatten, get_or_create_experiment  # MLflow: only where used

        with self.service._study_lock(study_id):
            row = self.service._row(study_id)
            if not row.mlflow_pending:
                return MlflowRecords(row.mlflow_experiment_id, row.mlflow_parent_run_id)
            study = stored_spec(row.spec)
            experiment = experiment_name(study_id, study.name)
            with ALEMBIC_LOCK:  # the first call may set up a new MLflow store (an alembic migration)
                tracker = RunTracker(self.service.mlflow_uri)
                experiment_id = get_or_create_experiment(tracker.client, experiment, self.service.mlflow_uri)
            tracker.client.set_experiment_tag(experiment_id, krpo_tags.STUDY_NAME, study.name)
            found = tracker.client.search_runs(
                [experiment_id],
                f"tags.`krpo.role` = '{STUDY_RUN_ROLE}' and tags.`krpo.study_id` = '{study_id}'",
                max_results=1,
            )
            tags = {
                krpo_tags.STUDY_ID: study_id,
                krpo_tags.STUDY_NAME: study.name,
                krpo_tags.KIND: study.kind,
                krpo_tags.ROLE: STUDY_RUN_ROLE,
            }
            run_id = tracker.start(experiment, study.name, run_id=found[0].info.run_id if found else None, tags=tags)
            tracker.log_params(
                flatten({"study": study.model_dump(mode="json", exclude={"base", "variants", "grid", "space"})})
            )
            tracker.log_dict(study.model_dump(mode="json"), "study.json")
            self.service.rows.update(
                study_id,
                {"mlflow_experiment_id": experiment_id, "mlflow_parent_run_id": run_id, "mlflow_pending": False},
            )
        return MlflowRecords(experiment_id, run_id)

    def settle_parent_run(self, study_id: str, *, reopen: bool = False) -> None:
        """Give the study's MLflow parent run the study's stored outcome (RUNNING again after a
        resume). An unreachable MLflow is logged, not raised: the jobs table holds the outcome."""
        row = self.service._row(study_id)
        status = PARENT_RUN_STATUS.get(row.status, "RUNNING")
        if not row.mlflow_parent_run_id or (status == "RUNNING" and not reopen):
            return
        from krpo_bench.tracking import RunTracker  # MLflow: only where used

        try:
            client = RunTracker(self.service.mlflow_uri).client
            if client.get_run(row.mlflow_parent_run_id).info.status == status:
                return
            if status == "RUNNING":
                client.update_run(row.mlflow_parent_run_id, status=status)
            else:
                client.set_terminated(row.mlflow_parent_run_id, status=status)
        except Exception as err:  # noqa: BLE001 - MLflow's errors have no common base we could name
            log.warning("could not set the MLflow parent run of study %s to %s: %s", study_id, status, err)
