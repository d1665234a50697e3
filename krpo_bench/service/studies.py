"""The study service: submit, expand, schedule, watch, cancel, resume and extend studies.

Everything the CLI, the API and the workers do to a study goes through :class:`StudyService`, a
facade over its parts: the search scheduler (krpo_bench.service.search), the MLflow outbox
(krpo_bench.service.outbox) and the sequential looks (krpo_bench.service.looks), each given the
service. Ablations are planned up front (variants x grid x seeds, enqueued idempotently by trial
key); searches ask Optuna for trials while the budget lasts. The job queue is the only writer of
jobs. A submission commits the study row and its jobs only; its MLflow experiment and parent run
are an outbox (``mlflow_pending``) that :meth:`StudyService.ensure_mlflow` fulfils afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from krpo_bench.analysis.model import GridPoint, StudyAnalysis
from krpo_bench.analysis.records import (
    CONFIG_GRID_POINT,
    CONFIG_VARIANT_NAME,
    RECORD_CONFIG_KEYS,
    records_from_jobs,
)
from krpo_bench.models.memory import trial_memory_mib
from krpo_bench.probe.checkpoint import (
    CheckpointNotFound,
    CheckpointSource,
    StudyTrial,
    checkpoint_source,
    source_trial,
)
from krpo_bench.probe.spec import CheckpointRef, ProbeSpec
from krpo_bench.service.db import (
    ACTIVE_JOB_STATUSES,
    JobStatus,
    StudyKind,
    StudyStatus,
    make_engine,
    new_id,
    upgrade,
    utcnow,
)
from krpo_bench.service.kinds import AnyStudy, handler, stored_spec, trial_tags, validate_submission
from krpo_bench.service.looks import SequentialLooks
from krpo_bench.service.outbox import MlflowOutbox, MlflowRecords, experiment_name
from krpo_bench.service.queue import AttemptInfo, JobInfo, JobQueue, NewJob, Reclaimed
from krpo_bench.service.search import SearchScheduler, optuna_study_name
from krpo_bench.service.study_state import live_since
from krpo_bench.service.worker_registry import WorkerInfo, WorkerRegistry
from krpo_bench.settings import default_db_url, default_mlflow_uri
from krpo_bench.spec.confirm import NotConfirmable, confirmation_spec
from krpo_bench.spec.study import StudySpec, validate_study

AMBIGUOUS_LISTED = 20  # candidates an ambiguous study reference lists
OLDER_REF = re.compile(r"(.+)~([1-9][0-9]{0,8})")
"""``name~N``: the N-th older study of a name (``name~0`` is not a form: the name alone is the newest)."""


class StudyError(ValueError):
    """A request the study's state does not allow (e.g. extending an ablation)."""


class StudyNotFound(KeyError):
    """No study with that id."""


class AmbiguousStudy(StudyError):
    """A study reference that names several studies; the message lists them."""


@dataclasses.dataclass(frozen=True)
class StudyInfo:
    id: str
    name: str
    kind: str
    status: str
    priority: int
    spec: dict[str, Any]
    counts: dict[str, int]
    total: int
    created_at: datetime
    optuna_study_name: str | None
    mlflow_experiment_id: str | None
    mlflow_parent_run_id: str | None
    looks: list[dict[str, Any]] | None = None

    @property
    def done(self) -> int:
        return sum(n for s, n in self.counts.items() if s not in ACTIVE_JOB_STATUSES)


@dataclasses.dataclass(frozen=True)
class StudyView:
    """A study as one read transaction saw it (:meth:`StudyService.view`): its summary (counted from
    its jobs), its validated spec, its jobs (only the config keys records read), the analysis of
    their results, and the live workers."""

    info: StudyInfo
    spec: AnyStudy
    jobs: list[JobInfo]
    analysis: StudyAnalysis
    workers: int


class StudyService:
    """Studies on one job database (SQLite file or PostgreSQL) and one MLflow tracking store."""

    def __init__(self, db_url: str | None = None, mlflow_uri: str | None = None, *, migrate: bool = True) -> None:
        self.db_url = db_url or default_db_url()
        self.mlflow_uri = mlflow_uri or default_mlflow_uri()
        self.engine = make_engine(self.db_url)
        if migrate:
            upgrade(self.engine)
        self.queue = JobQueue(self.engine)
        self.rows = self.queue.study_rows
        self.registry = WorkerRegistry(self.queue.transactions)
        self.outbox = MlflowOutbox(self)
        self.scheduler = SearchScheduler(self)
        self.looks = SequentialLooks(self)

    # -- submission -------------------------------------------------------------------------

    def submit(
        self,
        spec: AnyStudy | dict[str, Any],
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        confirms: str | None = None,
    ) -> StudyInfo:
        """Store a validated study and queue its trials (one transaction); MLflow is not touched:
        the study is marked ``mlflow_pending`` for :meth:`ensure_mlflow`. ``confirms``: the id of
        the study this one confirms on fresh seeds (:meth:`confirm`).

        All or nothing: when a later step fails (a search's Optuna study or first trials), what the
        earlier steps created is removed before the error propagates, so no broken study is left
        behind and a retry with the same ``idempotency_key`` submits afresh."""
        if idempotency_key:
            existing = self._by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing
        study = spec if isinstance(spec, (StudySpec, ProbeSpec)) else validate_submission(spec)
        kind = handler(study.kind)
        study_id = new_id()
        experiment = experiment_name(study_id, study.name)
        optuna_name = optuna_study_name(study_id)
        try:
            jobs = kind.plan(self, study_id, study, experiment)
            values = {
                "id": study_id,
                "name": study.name,
                "kind": study.kind,
                "spec": study.model_dump(mode="json"),
                "status": StudyStatus.RUNNING.value,
                "total_jobs": study.trial_count(),
                "priority": study.priority,
                "idempotency_key": idempotency_key,
                "owner": owner,
                "confirms": confirms,
                "optuna_study_name": optuna_name,
                "mlflow_pending": True,
                "created_at": utcnow(),
                "updated_at": utcnow(),
            }
            self.queue.create_study(values, jobs)
            if kind.scheduled:
                self.scheduler.optuna_study(optuna_name, study)
                self.top_up(study_id)
        except BaseException:
            self._discard(study_id, optuna_name)
            raise
        if kind.scheduled:
            return self.get(study_id)
        counts = {status.value: 0 for status in JobStatus} | {JobStatus.QUEUED.value: len(jobs)}
        return self._info(SimpleNamespace(**values, mlflow_experiment_id=None, mlflow_parent_run_id=None), counts)

    def confirm(
        self,
        study_ref: str,
        variants: Collection[str] | None = None,
        seeds: int | None = None,
        *,
        owner: str | None = None,
        admitted: Callable[[StudySpec], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> StudyInfo:
        """Submit a confirmation of ablation ``study_ref`` (:func:`confirmation_spec`): ``variants``
        (default: all) and the reference re-run at the same grid on ``seeds`` seeds (default: as many
        as its first look) above every seed of its jobs and of its earlier confirmations' jobs; the
        new study's ``confirms`` holds its id. ``admitted``: wraps the submission, given the spec (a
        server's policy and quota checks). StudyError when the study cannot be confirmed so."""
        study_id = self.resolve(study_ref)
        original = stored_spec(self._row(study_id).spec)
        with self._study_lock(study_id):  # two confirmations at once cannot take the same seeds
            linked = self.rows.confirmations_of(study_id)
            used = [
                job.config.get("seed")
                for sid in (study_id, *linked)
                for job in self.queue.list_jobs(sid, config_keys=("seed",))
            ]
            from krpo_bench.analysis.analyze import AnalysisSettings  # scipy: not at a worker's start

            try:
                spec = confirmation_spec(original, AnalysisSettings.of_spec(original).reference, used, variants, seeds)
            except NotConfirmable as exc:
                raise StudyError(str(exc)) from None
            with admitted(spec) if admitted is not None else contextlib.nullcontext():
                return self.submit(spec, owner=owner, confirms=study_id)

    def _discard(self, study_id: str, optuna_name: str) -> None:
        """Remove what a failed submission created (the Optuna study best effort)."""
        self.queue.discard_study(study_id)
        self.scheduler.discard(study_id, optuna_name)

    # -- MLflow records (the outbox, krpo_bench.service.outbox) --------------------------------

    def pending_mlflow(self, limit: int = 100) -> list[str]:
        """Ids of studies whose MLflow records are still to be created, oldest first."""
        return self.outbox.pending(limit)

    def ensure_mlflow(self, study_id: str) -> MlflowRecords:
        """The study's MLflow experiment and parent run, created exactly once (:meth:`MlflowOutbox.ensure`)."""
        return self.outbox.ensure(study_id)

    def _by_idempotency_key(self, key: str) -> StudyInfo | None:
        study_id = self.rows.by_idempotency_key(key)
        return self.get(study_id) if study_id else None

    def trial_job(
        self,
        study_id: str,
        study: StudySpec,
        key: str,
        label: str,
        seed: int,
        trial: Any,
        experiment: str,
        optuna_number: int | None = None,
        variant: str | None = None,
        grid_point: GridPoint = (),
    ) -> NewJob:
        """A job of the study; its MLflow parent run is the study's (the worker supplies it). ``label``
        is the trial group's display label, ``variant`` its variant's name (default: the label) and
        ``grid_point`` its grid point, kept as data in the config (``variant_name``, ``grid_point``)."""
        variant = label if variant is None else variant
        config = trial.model_dump(mode="json")
        config["experiment"] = experiment
        config["trial_id"] = f"{study_id[:8]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        return NewJob(
            trial_key=key,
            config={
                "trial": config,
                "variant": label,
                CONFIG_VARIANT_NAME: variant,
                CONFIG_GRID_POINT: [list(pair) for pair in grid_point],
                "seed": seed,
                "tags": trial_tags(study_id, study, key, label, seed, variant, grid_point),
                "optuna_study_name": optuna_study_name(study_id) if optuna_number is not None else None,
                "report_intermediate": optuna_number is not None and seed == study.search_seeds()[0],
            },
            priority=study.priority,
            max_attempts=study.resources.max_attempts,
            timeout_s=study.resources.timeout_s,
            gpus=study.resources.gpus_per_trial,
            optuna_trial_number=optuna_number,
            gpu_memory_mib=trial_memory_mib(trial, max(1, study.resources.gpus_per_trial)),
        )

    def _enqueue_planned(self, study_id: str, study: StudySpec, planned: list) -> None:
        experiment = experiment_name(study_id, study.name)
        jobs = [
            self.trial_job(study_id, study, p.key, p.label, p.seed, p.spec, experiment, None, p.variant, p.grid_point)
            for p in planned
        ]
        for start in range(0, len(jobs), 500):
            self.queue.enqueue_many(study_id, jobs[start : start + 500])

    @contextlib.contextmanager
    def _study_lock(self, study_id: str) -> Iterator[None]:
        """Serialises schedulers of one study: an advisory lock on PostgreSQL, a file lock on SQLite."""
        if self.engine.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha1(study_id.encode()).digest()[:7], "big")
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            return
        path = Path(self.engine.url.database or "krpo-bench.db").with_suffix(".schedule.lock")
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- searches (krpo_bench.service.search) ----------------------------------------------------

    def top_up(self, study_id: str) -> int:
        """Ask Optuna for new search trials while budget and parallelism allow (:meth:`SearchScheduler.top_up`)."""
        return self.scheduler.top_up(study_id)

    def report_intermediate(self, job: JobInfo | Any, step: int, value: float) -> bool:
        """Report a search trial's eval value to Optuna; True when the pruner says stop."""
        return self.scheduler.report_intermediate(job, step, value)

    def job_finished(self, job_id: str) -> None:
        """After a job reached a final state: tell Optuna once its trial's seeds are all done, top up."""
        job = self.queue.get_job(job_id)
        if job is None:
            return
        self.outbox.settle_parent_run(job.study_id)
        if job.optuna_trial_number is None:
            self.take_look(job.study_id)
            return
        if self.queue.trial_active(job.study_id, job.optuna_trial_number):
            return
        self.scheduler.tell_ended_trials(job.study_id, [job.optuna_trial_number])
        self.top_up(job.study_id)

    def take_look(self, study_id: str) -> dict[str, Any] | None:
        """Take the look a sequential ablation's ended batch is owed (:meth:`SequentialLooks.take_look`)."""
        return self.looks.take_look(study_id)

    def reclaim_expired(self) -> list[Reclaimed]:
        """Take back the jobs of workers whose lease expired (:meth:`JobQueue.reclaim_expired`), and
        finish those that ended (failed, cancelled) as their worker would have: Optuna told, the
        MLflow parent run settled, the search topped up."""
        reclaimed = self.queue.reclaim_expired()
        for job in reclaimed:
            if job.status != JobStatus.QUEUED:
                self.job_finished(job.id)
        return reclaimed

    # -- control ----------------------------------------------------------------------------

    def cancel(self, study_id: str) -> StudyInfo:
        """Cancel queued trials now (a search's Optuna trials told FAIL); running ones stop at their
        next heartbeat (and are told when their worker ends them)."""
        self._row(study_id)
        self.queue.cancel_study(study_id)
        self.scheduler.tell_ended_trials(study_id)
        self.outbox.settle_parent_run(study_id)
        return self.get(study_id)

    def resume(self, study_id: str) -> StudyInfo:
        """Continue an interrupted or cancelled study (the later command wins): reclaim dead
        leases, requeue every trial that did not succeed (``JobQueue.requeue_study``: cancelled,
        failed, and running ones whose cancellation was pending), re-plan missing ones, and top up
        a search. A search trial that Optuna already holds as finished runs again as a new Optuna
        trial with the same parameters, so its value reaches the sampler. Succeeded and pruned
        trials are never repeated. A sequential ablation takes a look its batch is owed."""
        row = self._row(study_id)
        study = stored_spec(row.spec)
        self.reclaim_expired()
        with self._study_lock(study_id):
            renumber = self.scheduler.fresh_trials(row, study) if study.kind == StudyKind.SEARCH else {}
            self.queue.requeue_study(study_id, renumber)
            if study.kind == StudyKind.SEARCH:
                self.scheduler.fail_orphan_trials(row, study)
        self.outbox.settle_parent_run(study_id, reopen=True)
        if study.kind == StudyKind.ABLATION:
            self._enqueue_planned(study_id, study, study.plan())
            self.take_look(study_id)  # a sequential study's look lost to a crash
        elif study.kind == StudyKind.SEARCH:
            self.top_up(study_id)
        return self.get(study_id)

    def extend(self, study_id: str, n_trials: int) -> StudyInfo:
        """Add ``n_trials`` to a search's budget (also after it finished) and schedule them."""
        if n_trials < 1:
            raise StudyError(f"n_trials must be >= 1, got {n_trials}")
        row = self._row(study_id)
        if row.kind != StudyKind.SEARCH:
            raise StudyError("only search studies can be extended; submit a new ablation instead")
        spec = dict(row.spec)
        spec["n_trials"] = (spec.get("n_trials") or 0) + n_trials
        study = validate_study(spec)
        self.rows.update(
            study_id,
            {
                "spec": study.model_dump(mode="json"),
                "total_jobs": study.trial_count(),
                "status": StudyStatus.RUNNING.value,
                "cancel_requested": False,
            },
        )
        self.top_up(study_id)
        return self.get(study_id)

    # -- reading ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The id of the study ``ref`` names, by the first rule that matches: its id; a study name
        (the newest study of that name); ``name~N`` (the N-th older study of that name, as
        :meth:`ref_of` writes it); a unique prefix of its id. Raises StudyNotFound, or
        AmbiguousStudy listing the candidates of a prefix (newest first)."""
        older = OLDER_REF.fullmatch(ref)
        names = [(ref, 0), *([(older[1], int(older[2]))] if older else [])]
        rows = self.rows.matching(ref, names, AMBIGUOUS_LISTED + 1)
        if isinstance(rows, str):
            return rows
        if not rows:
            raise StudyNotFound(ref)
        if len(rows) == 1:
            return rows[0].id
        listed = "".join(
            f"\n  {r.id}  {r.name!r}  created {r.created_at:%Y-%m-%d %H:%M}" for r in rows[:AMBIGUOUS_LISTED]
        )
        more = "\n  ... and more" if len(rows) > AMBIGUOUS_LISTED else ""
        raise AmbiguousStudy(f"{ref!r} names several studies; give the id of one:{listed}{more}")

    def resolve_checkpoint(self, ref: CheckpointRef) -> CheckpointSource:
        """The kept checkpoint a probe's ``checkpoint: {study, variant, seed, step, grid}`` names:
        the trial :meth:`checkpoint_trial` finds and its folder of the step in this process's data
        home (:func:`~krpo_bench.probe.checkpoint.checkpoint_source`). Raises CheckpointNotFound
        naming the reference's field."""
        return checkpoint_source(ref, *self._checkpoint_trials(ref))

    def checkpoint_trial(self, ref: CheckpointRef) -> StudyTrial:
        """The finished trial a probe's checkpoint reference names, its folder not looked at (the
        API admitting a probe: its data home is not its workers'); CheckpointNotFound naming the
        reference's field otherwise."""
        return source_trial(ref, *self._checkpoint_trials(ref))

    def _checkpoint_trials(self, ref: CheckpointRef) -> tuple[str, list[StudyTrial]]:
        """The reference's study, looked up as :meth:`resolve` does, as its messages name it, and its
        jobs as trials."""
        try:
            study_id = self.resolve(ref.study)
        except StudyNotFound:
            raise CheckpointNotFound(
                "checkpoint.study",
                f"no study {ref.study!r} in the job database (give a study id, a study name or name~N; run the source "
                "study first, or name its job database: --db, KRPO_BENCH_DB)",
            ) from None
        except AmbiguousStudy as exc:
            raise CheckpointNotFound("checkpoint.study", str(exc)) from None
        jobs = self.queue.list_jobs(study_id, config_keys=(*RECORD_CONFIG_KEYS, "trial"))
        trials = [
            StudyTrial(record.variant, dict(record.grid_point), record.seed, str(job.status), job.config.get("trial"))
            for record, job in zip(records_from_jobs(jobs), jobs)
        ]
        return self.ref_of(self.get(study_id)), trials

    def ref_of(self, info: StudyInfo) -> str:
        """The shortest name reference to ``info``'s study: its name when it is the newest study of
        that name, else ``name~N`` with N the studies of that name submitted after it."""
        newer = self.rows.newer_of_name(info.id, info.name, info.created_at)
        return info.name if newer == 0 else f"{info.name}~{newer}"

    def _row(self, study_id: str) -> Any:
        row = self.rows.get(study_id)
        if row is None:
            raise StudyNotFound(study_id)
        return row

    def _info(self, row: Any, counts: dict[str, int]) -> StudyInfo:
        return StudyInfo(
            id=row.id,
            name=row.name,
            kind=row.kind,
            status=row.status,
            priority=row.priority,
            spec=row.spec,
            counts=counts,
            total=row.total_jobs,
            created_at=row.created_at,
            optuna_study_name=row.optuna_study_name,
            mlflow_experiment_id=row.mlflow_experiment_id,
            mlflow_parent_run_id=row.mlflow_parent_run_id,
            looks=getattr(row, "looks", None),
        )

    def get(self, study_id: str) -> StudyInfo:
        row = self._row(study_id)
        counts = {str(k): v for k, v in self.queue.counts(study_id).items()}
        return self._info(row, counts)

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[StudyInfo]:
        """Studies newest first, optionally only those of a stored ``status``, with job counts (one
        query for the page, one grouped query for its counts)."""
        rows = self.rows.list(status=status, limit=limit, offset=offset)
        counts = self.queue.counts_of([r.id for r in rows])
        return [self._info(r, counts[r.id]) for r in rows]

    def jobs(
        self,
        study_id: str,
        *,
        statuses: Collection[JobStatus] | None = None,
        limit: int | None = None,
        offset: int = 0,
        config_keys: Sequence[str] | None = None,
    ) -> list[JobInfo]:
        """The study's jobs (those in ``statuses``), in queue order, a page of them with ``limit``;
        ``config_keys``: read only those keys of each job's config."""
        self._row(study_id)
        return self.queue.list_jobs(study_id, statuses=statuses, limit=limit, offset=offset, config_keys=config_keys)

    def job(self, job_id: str) -> JobInfo | None:
        """One job, or None."""
        return self.queue.get_job(job_id)

    def attempts(self, job_id: str) -> list[AttemptInfo]:
        """A job's attempts, oldest first."""
        return self.queue.list_attempts(job_id)

    def workers(self) -> list[WorkerInfo]:
        """The registered workers."""
        return self.registry.list()

    def results(self, study_id: str, jobs: list[JobInfo] | None = None) -> StudyAnalysis:
        """The analysis of the study's final held-out accuracy (krpo_bench.analysis): per variant and
        grid point the succeeded trials' values by seed, mean and IQM with 95 % intervals and the
        accuracy before training; in an ablation each against the reference variant at its grid
        point (paired by seed when the seed sets match, with the seeds that would detect
        ``analysis.target_effect``). ``jobs``: the study's jobs, when the caller has just read them
        (else they are read with the study's row, in one transaction)."""
        if jobs is None:
            row, jobs = self.queue.transactions.run(
                lambda conn: (self.rows.read(conn, study_id), self.queue.read_jobs(conn, study_id, RECORD_CONFIG_KEYS)),
                read_only=True,
            )
            if row is None:
                raise StudyNotFound(study_id)
        else:
            row = self._row(study_id)
        return _analysis(stored_spec(row.spec), row.looks, jobs)

    def view(self, study_id: str, info: StudyInfo | None = None, spec: AnyStudy | None = None) -> StudyView:
        """The study's detail, read in one transaction: its row (unless ``info``, its summary the
        caller has just read or stored, is given), its jobs (:data:`RECORD_CONFIG_KEYS` of each
        config; the counts are theirs) and the live workers. ``spec``: its validated spec, when the
        caller holds it (else validated from the stored one)."""
        since = live_since(utcnow())

        def txn(conn: Connection) -> tuple[Any, list[JobInfo], int]:
            row = self.rows.read(conn, study_id) if info is None else None
            if info is None and row is None:
                raise StudyNotFound(study_id)
            return row, self.queue.read_jobs(conn, study_id, RECORD_CONFIG_KEYS), self.registry.count_live(conn, since)

        row, jobs, workers = self.queue.transactions.run(txn, read_only=True)
        counts = dict.fromkeys((status.value for status in JobStatus), 0)
        for job in jobs:
            counts[job.status.value] += 1
        info = self._info(row, counts) if info is None else dataclasses.replace(info, counts=counts)
        spec = stored_spec(info.spec) if spec is None else spec
        return StudyView(info, spec, jobs, _analysis(spec, info.looks, jobs), workers)


def _analysis(spec: AnyStudy, looks: list[dict[str, Any]] | None, jobs: list[JobInfo]) -> StudyAnalysis:
    """The analysis of a study's jobs under its spec and the looks stored so far."""
    from krpo_bench.analysis.analyze import AnalysisSettings, analyze  # scipy: not at a worker's start

    return analyze(records_from_jobs(jobs), AnalysisSettings.of_spec(spec, looks=looks))
