"""Search scheduling with Optuna: ask for trials while the budget lasts, report, tell, resume.

Searches ask Optuna for trials while the budget lasts, never more than ``parallelism`` in flight,
under the per-study lock so concurrent callers cannot overshoot. Optuna is used through its public
API, one ``optuna.Study`` per service and search (:class:`SearchScheduler` keeps them).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from krpo_bench.service.db import ACTIVE_JOB_STATUSES, Job, JobStatus, StudyKind, StudyStatus, read_connection
from krpo_bench.service.optuna_store import distribution, make_pruner, make_sampler, optuna_storage
from krpo_bench.service.outbox import experiment_name
from krpo_bench.service.queue import JobInfo
from krpo_bench.service.transactions import is_database_outage
from krpo_bench.spec.study import StudySpec

if TYPE_CHECKING:
    from krpo_bench.service.studies import StudyService

log = logging.getLogger(__name__)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_study_name(study_id: str) -> str:
    """The Optuna study of a search, named by the study's id."""
    return f"krpo-{study_id}"


def trial_verdict(
    outcomes: Sequence[tuple[str, dict[str, Any] | None]], metric: str
) -> tuple[optuna.trial.TrialState, float | None] | None:
    """What to tell Optuna of a search trial from its jobs' ``(status, result)``: None while one is
    active; COMPLETE with the mean of ``final_<metric>`` over its seeds when all succeeded with a
    value; PRUNED when one was pruned; else FAIL."""
    statuses = {status for status, _ in outcomes}
    if statuses & ACTIVE_JOB_STATUSES:
        return None
    values = [(result or {}).get(f"final_{metric}") for _, result in outcomes]
    if statuses == {JobStatus.SUCCEEDED.value} and all(v is not None for v in values):
        return optuna.trial.TrialState.COMPLETE, sum(values) / len(values)
    if JobStatus.PRUNED.value in statuses:
        return optuna.trial.TrialState.PRUNED, None
    return optuna.trial.TrialState.FAIL, None


class SearchScheduler:
    """The Optuna side of the searches of one :class:`StudyService`."""

    def __init__(self, service: StudyService) -> None:
        self.service = service
        self._optuna: dict[str, optuna.Study] = {}  # by Optuna study name, built once per service

    def discard(self, study_id: str, optuna_name: str) -> None:
        """Remove the Optuna study of a failed submission, best effort."""
        self._optuna.pop(optuna_name, None)
        try:
            optuna.delete_study(study_name=optuna_name, storage=optuna_storage(self.service.db_url))
        except KeyError:
            pass  # never created
        except Exception:
            log.warning("could not remove the Optuna study of the failed submission %s", study_id, exc_info=True)

    def optuna_study(self, name: str, study: StudySpec) -> optuna.Study:
        """The search's Optuna study, created (or loaded) once per service and kept."""
        ostudy = self._optuna.get(name)
        if ostudy is None:
            ostudy = optuna.create_study(
                study_name=name,
                storage=optuna_storage(self.service.db_url),
                direction=study.objective.direction,
                sampler=make_sampler(study),
                pruner=make_pruner(study.pruner),
                load_if_exists=True,
            )
            self._optuna[name] = ostudy
        return ostudy

    def optuna_trial(self, name: str, study: StudySpec, number: int) -> tuple[optuna.Study, int]:
        """The search's Optuna study and the storage id of its trial ``number`` (public storage API)."""
        ostudy = self.optuna_study(name, study)
        storage = optuna_storage(self.service.db_url)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
        return ostudy, trial_id

    def top_up(self, study_id: str) -> int:
        """Ask Optuna for new search trials while budget and parallelism allow; returns how many.
        The study is read under the study lock, so a cancel that commits before it is seen, and
        one that commits after finds the jobs to cancel (and, in :meth:`StudyService.cancel`, trials to tell)."""
        if self.service._row(study_id).kind != StudyKind.SEARCH:
            return 0
        with self.service._study_lock(study_id):
            row = self.service._row(study_id)
            if row.status != StudyStatus.RUNNING.value or row.cancel_requested:
                return 0
            study = StudySpec.model_validate(row.spec)
            with read_connection(self.service.engine) as conn:
                rows = conn.execute(select(Job.optuna_trial_number, Job.status).where(Job.study_id == study_id)).all()
            asked = len({number for number, _ in rows})
            in_flight = len({number for number, status in rows if status in ACTIVE_JOB_STATUSES})
            room = min(study.n_trials - asked, study.parallelism - in_flight)
            if room <= 0:
                return 0
            ostudy = self.optuna_study(row.optuna_study_name, study)
            ostudy.sampler = make_sampler(study, seed_offset=asked)  # see make_sampler: a fresh seed per batch
            dists = {path: distribution(p) for path, p in (study.space or {}).items()}
            experiment = experiment_name(study_id, study.name)
            jobs = []
            for _ in range(room):
                trial = ostudy.ask(dists)
                for seed in study.search_seeds():
                    label = f"trial {trial.number}"
                    key = f"trial-{trial.number:05d}|seed={seed}"
                    spec = study.trial_config(dict(trial.params), seed, f"{label} seed={seed}")
                    jobs.append(
                        self.service.trial_job(study_id, study, key, label, seed, spec, experiment, trial.number)
                    )
            self.service.queue.enqueue_many(study_id, jobs)
            return room

    def report_intermediate(self, job: JobInfo | Any, step: int, value: float) -> bool:
        """Report a search trial's eval value to Optuna; True when the pruner says stop.

        A database outage loses this one report and answers "go on" (the trial is pruned, if at
        all, at a later evaluation) rather than failing a trial that trains fine."""
        config = job.config
        if not config.get("optuna_study_name") or job.optuna_trial_number is None:
            return False
        try:
            row = self.service._row(job.study_id)
            ostudy, trial_id = self.optuna_trial(
                row.optuna_study_name, StudySpec.model_validate(row.spec), job.optuna_trial_number
            )
            trial = optuna.trial.Trial(ostudy, trial_id)
            if config.get("report_intermediate"):
                trial.report(value, step)
            return trial.should_prune()
        except (DBAPIError, optuna.exceptions.StorageInternalError) as err:
            if not is_database_outage(err):
                raise
            log.warning("could not report step %d of job %s to Optuna (database unavailable): %s", step, job.id, err)
            return False

    def tell_ended_trials(self, study_id: str, numbers: Collection[int] | None = None) -> None:
        """Tell Optuna the outcome (:func:`trial_verdict`) of each trial of a search (all, or
        ``numbers``) whose jobs have all ended and that Optuna still holds as running. Under the
        study lock: a resume requeueing a trial's jobs comes wholly before or after."""
        row = self.service._row(study_id)
        if row.kind != StudyKind.SEARCH:
            return
        study = StudySpec.model_validate(row.spec)
        query = select(Job.optuna_trial_number, Job.status, Job.result).where(
            Job.study_id == study_id, Job.optuna_trial_number.is_not(None)
        )
        if numbers is not None:
            query = query.where(Job.optuna_trial_number.in_(list(numbers)))
        metric = study.objective.metric.split("/")[-1]
        with self.service._study_lock(study_id):
            with read_connection(self.service.engine) as conn:
                rows = conn.execute(query).all()
            outcomes: dict[int, list[tuple[str, dict[str, Any] | None]]] = {}
            for number, status, result in rows:
                outcomes.setdefault(number, []).append((status, result))
            ostudy = self.optuna_study(row.optuna_study_name, study)
            running = {t.number for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
            for number in sorted(running & outcomes.keys()):
                verdict = trial_verdict(outcomes[number], metric)
                if verdict is not None:
                    state, value = verdict
                    try:
                        ostudy.tell(number, value, state=state, skip_if_finished=True)
                    except RuntimeError:
                        pass  # the grid sampler, its grid done, asks an optimize loop to stop; the trial is stored

    def fresh_trials(self, row: Any, study: StudySpec) -> dict[int, int]:
        """For each trial that a resume requeues but Optuna holds as finished (told FAIL when it
        failed or was cancelled; a finished trial cannot be told again), a new Optuna trial with its
        parameters (``enqueue_trial`` + ``ask``): old number -> new number. Under the study lock."""
        with read_connection(self.service.engine) as conn:
            redone = set(
                conn.execute(
                    select(Job.optuna_trial_number).where(
                        Job.study_id == row.id,
                        Job.optuna_trial_number.is_not(None),
                        Job.status.not_in([JobStatus.SUCCEEDED.value, JobStatus.PRUNED.value]),
                    )
                ).scalars()
            )
        if not redone:
            return {}
        ostudy = self.optuna_study(row.optuna_study_name, study)
        dists = {path: distribution(p) for path, p in (study.space or {}).items()}
        renumber = {}
        for old in ostudy.get_trials(deepcopy=False):
            if old.number in redone and old.state.is_finished():
                ostudy.enqueue_trial(old.params)
                renumber[old.number] = ostudy.ask(dists).number
        return renumber

    def fail_orphan_trials(self, row: Any, study: StudySpec) -> None:
        """Optuna trials asked by a scheduler that died before queueing their jobs. Under the study lock."""
        ostudy = self.optuna_study(row.optuna_study_name, study)
        with read_connection(self.service.engine) as conn:
            known = set(conn.execute(select(Job.optuna_trial_number).where(Job.study_id == row.id)).scalars())
        for trial in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number not in known:
                ostudy.tell(trial.number, state=optuna.trial.TrialState.FAIL)
