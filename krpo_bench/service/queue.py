"""The durable job queue: enqueue, claim under a lease, heartbeat, fenced completion, reclaim.

Every method is one short transaction, safe to call from many processes and machines at once.
Claims are atomic: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, a ``BEGIN IMMEDIATE``
(serialised) write transaction on SQLite. Each claim bumps ``attempt``, the fence token: only the
holder of the current attempt of a running job can heartbeat or write its outcome. Every change
of a job's holder is written to the ``job_attempts`` audit trail in the same transaction.

The queue owns jobs only and is the only writer of ``jobs``: enqueueing (a new study with its jobs
in one transaction), claims, outcomes, cancelling and requeueing a study. Where a study row changes
with its jobs, the queue calls :class:`StudyRows` (the one home of statements on ``studies``) inside
its own transaction. A study's stored status is settled as its jobs end, never derived on read
(``StudyRows.settle``). Ending a job costs the same whatever the study's size: the job's end commits
first, then an index probe (``jobs (study_id, status)``) asks whether the study still has an active
job, and only a study that has none is locked and settled (the last of concurrent finishers to
commit sees the others' ends). ``reclaim_expired`` also settles a study whose last job's finisher
died between the two.

The later command wins: a resume (``requeue_study``) clears every pending cancellation and requeues
every job that did not succeed (or was pruned), a running job whose cancellation was pending included
(its holder, dead or alive, is fenced off: its attempt no longer holds the job).

Lock order (PostgreSQL row locks; no two transactions wait on each other in a cycle): a transaction
that locks a study row and job rows locks the study row first (``cancel_study``, ``requeue_study``,
enqueueing); a job's end, claim, heartbeat and reclaim lock job rows only, and settling a study is
a transaction of its own that locks only the study row.

The hot path (claim, heartbeat, complete) is built once per queue; on PostgreSQL each of these is
a single statement (the audit row rides along in a data-modifying CTE) run in autocommit mode.

Clock: leases and timestamps use the database server's clock (``now()``) on PostgreSQL, so worker
machines with skewed clocks agree; on SQLite (embedded: the database and its workers share one
machine) they use the local clock in UTC.

Transient errors (SQLite "database is locked", PostgreSQL serialisation failures, deadlocks and lost
connections) are retried with backoff (:class:`Transactions`). A claim whose commit was acknowledged
by the server but whose reply was lost is recovered like a crashed worker: its lease expires and the
job is reclaimed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Engine,
    Executable,
    Row,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.engine import URL, Connection

from krpo_bench.service.db import (
    ACTIVE_JOB_STATUSES,
    AttemptOutcome,
    Job,
    JobAttempt,
    JobStatus,
    StudyStatus,
    make_engine,
    new_id,
)
from krpo_bench.service.study_rows import StudyRows, studies
from krpo_bench.service.transactions import Transactions

jobs = cast(Table, Job.__table__)
attempts = cast(Table, JobAttempt.__table__)

UNESTIMATED_GPU_MEMORY_MIB = 8 * 1024
"""What a job enqueued without a memory estimate is taken to need per GPU (the fixed budget of old)."""

_ACTIVE_VALUES = sorted(status.value for status in ACTIVE_JOB_STATUSES)
"""The active statuses as plain strings, the form the database drivers bind."""
_LOOKUP_CHUNK = 500
_CLAIM_WINDOW = 16
"""Queued jobs a claim considers besides each active study's next one: the first by priority and age."""


class Heartbeat(StrEnum):
    """What a worker's heartbeat learns about its job."""

    OK = "ok"
    CANCEL = "cancel"
    """Cancellation was requested: stop the trial and call ``mark_cancelled``."""
    LOST = "lost"
    """The attempt is no longer current (lease reclaimed, job finished): stop, write nothing."""


@dataclass(frozen=True)
class NewJob:
    """One job to enqueue (see ``JobQueue.enqueue``)."""

    trial_key: str
    config: dict[str, Any]
    priority: int = 0
    max_attempts: int = 3
    timeout_s: float | None = None
    gpus: int = 1
    optuna_trial_number: int | None = None
    gpu_memory_mib: int | None = None
    """Estimated peak memory of one of its processes on a GPU (``krpo_bench.models.memory``)."""


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now holds; ``attempt`` is the fence token to pass back."""

    id: str
    study_id: str
    trial_key: str
    attempt: int
    config: dict[str, Any]
    priority: int
    lease_expires_at: datetime
    timeout_s: float | None
    gpus: int
    optuna_trial_number: int | None
    failures: int
    max_attempts: int
    mlflow_run_id: str | None
    gpu_memory_mib: int | None


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job row."""

    id: str
    study_id: str
    trial_key: str
    optuna_trial_number: int | None
    config: dict[str, Any]
    status: JobStatus
    priority: int
    attempt: int
    failures: int
    max_attempts: int
    owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    timeout_s: float | None
    gpus: int
    gpu_memory_mib: int | None
    result: dict[str, Any] | None
    last_error: str | None
    mlflow_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptInfo:
    """One claim of a job, from the audit trail."""

    job_id: str
    attempt: int
    worker: str
    started_at: datetime
    ended_at: datetime | None
    outcome: AttemptOutcome | None
    error: str | None


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel_study`` did: queued jobs cancelled, running jobs asked to stop."""

    cancelled: int
    signalled: int


@dataclass(frozen=True)
class Reclaimed:
    """A running job taken back from a worker whose lease expired, and where it went."""

    id: str
    study_id: str
    status: JobStatus
    """queued (retried), failed (attempts used up) or cancelled (its cancellation was pending)."""


def _columns(cls: type, table: Table) -> list[Any]:
    return [table.c[f.name] for f in fields(cls)]


_CLAIM_COLUMNS = [*_columns(ClaimedJob, jobs), jobs.c.started_at]


def _job_info(row: Row[Any]) -> JobInfo:
    values = dict(row._mapping)
    values["status"] = JobStatus(values["status"])
    picked = {name[len("config.") :]: values.pop(name) for name in list(values) if name.startswith("config.")}
    if picked:  # a read of only some keys of the config (list_jobs(config_keys=...))
        values["config"] = picked
    return JobInfo(**values)


def _job_columns(config_keys: Sequence[str] | None) -> list[Any]:
    """A job's columns, its ``config`` only the ``config_keys`` of it (each read by JSON path) when given."""
    columns = _columns(JobInfo, jobs)
    if config_keys is None:
        return columns
    return [c for c in columns if c.name != "config"] + [jobs.c.config[k].label(f"config.{k}") for k in config_keys]


@functools.cache
def _study_jobs(config_keys: tuple[str, ...] | None) -> Executable:
    """All of a study's jobs (parameter ``p_study``) in enqueue order: built once per ``config_keys``."""
    return select(*_job_columns(config_keys)).where(jobs.c.study_id == bindparam("p_study")).order_by(jobs.c.seq)


def _status_is(table: Any, status: JobStatus) -> ColumnElement[bool]:
    """``status = '<status>'`` with the status written inline, not bound: a partial index over one
    status (``ix_jobs_claim``, ``ix_jobs_lease``) serves only a condition the planner can prove."""
    return cast(ColumnElement[bool], table.c.status == literal_column(f"'{status.value}'"))


_HELD = (
    jobs.c.id == bindparam("p_id"),
    jobs.c.attempt == bindparam("p_attempt"),
    jobs.c.status == JobStatus.RUNNING,
)
"""Where-clause of "this attempt holds the job" (parameters ``p_id``, ``p_attempt``)."""
_CANCELLED = {"status": JobStatus.CANCELLED.value, "cancel_requested": True}


class JobQueue:
    """The job queue on one engine (see the module docstring for guarantees)."""

    def __init__(self, engine: Engine, *, max_retries: int = 8) -> None:
        self.engine = engine
        self.transactions = Transactions(engine, max_retries=max_retries)
        """This process's transactions on the engine, shared with the study rows and the worker registry."""
        self.study_rows = StudyRows(self.transactions)
        """The study rows, written in the queue's transactions where a study changes with its jobs."""
        self._pg = self.transactions.pg
        self._now = self.transactions.now
        self._lease_until = self.transactions.lease_until
        # The hot path (claim, heartbeat, finish) is built once and reused with parameters.
        self._claim_any = self._build_claim(gpus_filter=False)
        self._claim_gpus = self._build_claim(gpus_filter=True)
        self._claim_fitting: dict[int, Executable] = {}  # by the number of GPUs offered
        self._heartbeat = (
            update(jobs).where(*_HELD).values(lease_expires_at=self._lease_until).returning(jobs.c.cancel_requested)
        )
        self._close_attempt = (
            update(attempts)
            .where(
                attempts.c.job_id == bindparam("p_id"),
                attempts.c.attempt == bindparam("p_attempt"),
            )
            .values(ended_at=self._now, outcome=bindparam("p_outcome"), error=bindparam("p_error"))
        )
        self._finish_held = self._build_finish()
        self._insert_job = (
            self.transactions.insert(jobs)
            .values(created_at=self._now)
            .on_conflict_do_nothing(index_elements=["study_id", "trial_key"])
        )
        self._last_seq = select(func.coalesce(func.max(jobs.c.seq), 0))

    @classmethod
    def from_url(cls, url: str | URL, **kwargs: Any) -> JobQueue:
        """A queue on a new engine for ``url`` (``make_engine``); the schema must be migrated."""
        return cls(make_engine(url), **kwargs)

    # -- plumbing ---------------------------------------------------------------------------

    def _build_claim(self, *, gpus_filter: bool, rooms: int = 0) -> Executable:
        def fits(table: Any) -> list[ColumnElement[bool]]:
            where = [_status_is(table, JobStatus.QUEUED), table.c.cancel_requested.is_(False)]
            if gpus_filter:
                where.append(table.c.gpus <= bindparam("p_gpus_free"))
            if rooms:
                # A job on k GPUs fits when the k-th roomiest GPU offered (p_room_k) holds its estimate.
                room = case(
                    (table.c.gpus <= 1, bindparam("p_room_1")),
                    *[(table.c.gpus == k, bindparam(f"p_room_{k}")) for k in range(2, rooms + 1)],
                    else_=-1,
                )
                where.append(func.coalesce(table.c.gpu_memory_mib, UNESTIMATED_GPU_MEMORY_MIB) <= room)
            return where

        # Fair across owners (an owner: the token that submitted a study): the highest priority first,
        # then the job whose owner runs the fewest jobs, then the one whose owner was served longest
        # ago (so even one worker taking one job at a time alternates between owners), then the
        # oldest. That job is the next one of its study, so the candidates are each running study's
        # next job and the queue's first few (jobs of a study not stored as running are never
        # starved, and concurrent claims skip each other's locked rows). Each running study costs
        # one probe of ix_jobs_study_queue and one of ix_jobs_study_started: never a queue scan.
        nxt, run, last, holder = jobs.alias("nxt"), jobs.alias("run"), jobs.alias("last"), studies.alias("holder")
        # PostgreSQL's planner, taking a study's jobs for a random sample of the queue, would walk
        # ix_jobs_claim filtering on the study (a scan of the queue ahead of a small study's jobs); a
        # range it cannot turn into an equality keeps the study in the order, which only
        # ix_jobs_study_queue provides. SQLite uses that index for the plain equality.
        of_study = (
            and_(nxt.c.study_id >= studies.c.id, nxt.c.study_id <= studies.c.id)
            if self._pg
            else nxt.c.study_id == studies.c.id
        )
        next_of_study = (
            select(nxt.c.id)
            .where(of_study, *fits(nxt))
            .order_by(nxt.c.study_id, nxt.c.priority.desc(), nxt.c.seq)
            .limit(1)
            .scalar_subquery()
        )
        heads = select(next_of_study.label("id")).where(
            studies.c.status == StudyStatus.RUNNING, studies.c.cancel_requested.is_(False)
        )
        first = (
            select(jobs.c.id)
            .where(*fits(jobs))
            .order_by(jobs.c.priority.desc(), jobs.c.seq)
            .limit(_CLAIM_WINDOW)
            .subquery()
        )
        candidates = union(heads, select(first.c.id)).subquery("candidates")
        per_study = (
            select(
                holder.c.owner,
                select(func.count())
                .where(run.c.study_id == holder.c.id, run.c.status == JobStatus.RUNNING)
                .scalar_subquery()
                .label("running"),
                select(func.max(last.c.started_at))
                .where(last.c.study_id == holder.c.id)
                .scalar_subquery()
                .label("served"),
            )
            .where(holder.c.status == StudyStatus.RUNNING)
            .subquery("per_study")
        )
        owners = (
            select(
                per_study.c.owner,
                func.sum(per_study.c.running).label("running"),
                func.max(per_study.c.served).label("served"),
            )
            .group_by(per_study.c.owner)
            .cte("owners")
            .prefix_with("MATERIALIZED")  # once per claim, not once per candidate (a nested loop's rescans)
        )
        pick = (
            select(jobs.c.id)
            .select_from(
                jobs.join(candidates, candidates.c.id == jobs.c.id)
                .join(studies, studies.c.id == jobs.c.study_id)
                .outerjoin(owners, owners.c.owner.is_not_distinct_from(studies.c.owner))
            )
            .where(jobs.c.status == JobStatus.QUEUED)
            .order_by(
                jobs.c.priority.desc(), func.coalesce(owners.c.running, 0), owners.c.served.nulls_first(), jobs.c.seq
            )
            .limit(1)
            .with_for_update(skip_locked=True, of=jobs)
        )
        claim = (
            update(jobs)
            .where(jobs.c.id == pick.scalar_subquery(), jobs.c.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING.value,
                owner=bindparam("p_worker"),
                attempt=jobs.c.attempt + 1,
                lease_expires_at=self._lease_until,
                started_at=self._now,
            )
            .returning(*_CLAIM_COLUMNS)
        )
        if not self._pg:
            return claim
        claimed = claim.cte("claimed")  # one statement: the claim and its audit row together
        log = attempts.insert().from_select(
            ["job_id", "attempt", "worker", "started_at"],
            select(claimed.c.id, claimed.c.attempt, bindparam("p_worker"), claimed.c.started_at),
        )
        return select(claimed).add_cte(log.cte("log"))

    def _build_finish(self) -> Executable:
        finish = (
            update(jobs)
            .where(*_HELD)
            .values(
                status=bindparam("p_status"),
                result=bindparam("p_result", type_=jobs.c.result.type),
                finished_at=self._now,
                lease_expires_at=None,
            )
        )
        if not self._pg:
            return finish.returning(jobs.c.study_id)
        done = finish.returning(jobs.c.id, jobs.c.study_id).cte("done")  # job and audit row together
        close = (
            update(attempts)
            .where(  # the audit row by its key (a join with ``done`` may be planned as a scan)
                attempts.c.job_id == bindparam("p_id"),
                attempts.c.attempt == bindparam("p_attempt"),
                select(done.c.id).exists(),
            )
            .values(ended_at=self._now, outcome=bindparam("p_outcome"))
        )
        return select(done.c.study_id).add_cte(close.cte("close"))

    def _held(self, conn: Connection, job_id: str, attempt: int) -> Row[Any] | None:
        """Lock and return the job if ``attempt`` currently holds it (running), else None."""
        return conn.execute(
            select(jobs).where(*_HELD).with_for_update(), {"p_id": job_id, "p_attempt": attempt}
        ).first()

    def _log_end(
        self,
        conn: Connection,
        job_id: str,
        attempt: int,
        outcome: AttemptOutcome,
        error: str | None,
    ) -> None:
        params = {
            "p_id": job_id,
            "p_attempt": attempt,
            "p_outcome": outcome.value,
            "p_error": error,
        }
        conn.execute(self._close_attempt, params | self.transactions.clock())

    def _finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        outcome: AttemptOutcome,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Move a held job to a terminal ``status``; True also when this attempt already did."""
        params = {
            "p_id": job_id,
            "p_attempt": attempt,
            "p_status": status.value,
            "p_result": result,
            "p_outcome": outcome.value,
        }

        def txn(conn: Connection) -> tuple[bool, str | None]:
            study_id = conn.execute(self._finish_held, params | self.transactions.clock()).scalar()
            if study_id is not None:
                if not self._pg:
                    self._log_end(conn, job_id, attempt, outcome, None)
                # The settle probe sees this end: committed already on PostgreSQL (autocommit), in
                # this serialised write transaction on SQLite.
                return True, study_id if self.study_rows.may_settle(conn, study_id) else None
            current = conn.execute(select(jobs.c.status, jobs.c.attempt).where(jobs.c.id == job_id)).first()
            return current is not None and (current.status, current.attempt) == (status, attempt), None

        done, settle = self.transactions.run(txn, single=True)
        if settle is not None:
            self.transactions.run(lambda conn: self.study_rows.settle(conn, settle))
        return done

    def _settle(self, study_id: str) -> None:
        """After a job of the study ended (committed): settle the study if that was its last active
        job. The probe decides without a lock; only a study that looks settled is locked."""
        if self.transactions.run(lambda conn: self.study_rows.may_settle(conn, study_id), read_only=True, single=True):
            self.transactions.run(lambda conn: self.study_rows.settle(conn, study_id))

    def _end_attempt(
        self,
        conn: Connection,
        job: Row[Any],
        *,
        counts_as_failure: bool,
        requeue: bool,
        outcome: AttemptOutcome,
        error: str | None,
    ) -> JobStatus:
        """Requeue a held job while attempts remain, else fail it; a job whose cancellation was
        requested is cancelled instead of requeued. The caller settles the study after commit."""
        failures = job.failures + int(counts_as_failure)
        if requeue and job.cancel_requested:
            status = JobStatus.CANCELLED
        elif requeue and failures < job.max_attempts:
            status = JobStatus.QUEUED
        else:
            status = JobStatus.FAILED
        values: dict[str, Any] = {
            "status": status.value,
            "failures": failures,
            "lease_expires_at": None,
            "finished_at": None if status == JobStatus.QUEUED else self._now,
        }
        if status == JobStatus.QUEUED:
            values["owner"] = None
        if counts_as_failure:
            values["last_error"] = error
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(**values), self.transactions.clock())
        self._log_end(conn, job.id, job.attempt, outcome, error)
        return status

    # -- producers --------------------------------------------------------------------------

    def enqueue(
        self,
        study_id: str,
        trial_key: str,
        config: dict[str, Any],
        *,
        priority: int = 0,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        gpus: int = 1,
        optuna_trial_number: int | None = None,
        gpu_memory_mib: int | None = None,
    ) -> str:
        """Queue one job and return its id; idempotent on ``(study_id, trial_key)``: a repeat
        returns the existing job's id and changes nothing."""
        job = NewJob(trial_key, config, priority, max_attempts, timeout_s, gpus, optuna_trial_number, gpu_memory_mib)
        return self.enqueue_many(study_id, [job])[0]

    def enqueue_many(self, study_id: str, new_jobs: Sequence[NewJob]) -> list[str]:
        """Queue a batch in one transaction; returns ids in input order (idempotent per trial key).
        Jobs added to a study whose cancellation was requested are created cancelled."""
        if not new_jobs:
            return []
        return self.transactions.run(lambda conn: self._insert_jobs(conn, study_id, new_jobs))

    def create_study(self, values: dict[str, Any], new_jobs: Sequence[NewJob]) -> list[str]:
        """Store a new study row (``values``, with its ``id``) and queue its jobs, all in one
        transaction: either both are stored or neither. Returns the job ids in input order."""

        enqueued = len({job.trial_key for job in new_jobs})

        def txn(conn: Connection) -> list[str]:
            self.study_rows.insert(conn, values, enqueued=enqueued)
            return self._insert_jobs(conn, values["id"], new_jobs, new_study=True) if new_jobs else []

        return self.transactions.run_grouped(txn)

    def _insert_jobs(
        self, conn: Connection, study_id: str, new_jobs: Sequence[NewJob], *, new_study: bool = False
    ) -> list[str]:
        """Insert jobs of one study (see ``enqueue_many``) in the transaction of ``conn``;
        ``new_study``: the study row was inserted in this transaction (not cancelled, no jobs yet, its
        ``enqueued_jobs`` already counting them). Locks the study row (first), then inserts."""
        cancelled = False
        if not new_study:
            cancelled = self.study_rows.lock_for_jobs(conn, study_id)
        status = JobStatus.CANCELLED if cancelled else JobStatus.QUEUED
        unique = list({job.trial_key: job for job in reversed(new_jobs)}.values())[::-1]
        clock = self.transactions.clock()
        rows = [
            {
                **clock,
                "id": new_id(),
                "study_id": study_id,
                "trial_key": job.trial_key,
                "optuna_trial_number": job.optuna_trial_number,
                "config": job.config,
                "status": status.value,
                "priority": job.priority,
                "max_attempts": job.max_attempts,
                "timeout_s": job.timeout_s,
                "gpus": job.gpus,
                "gpu_memory_mib": job.gpu_memory_mib,
                "attempt": 0,
                "failures": 0,
                "cancel_requested": cancelled,
            }
            for job in unique
        ]
        if not self._pg:  # no identity columns in SQLite; writes are serialised
            base = conn.execute(self._last_seq).scalar_one()
            for offset, row in enumerate(rows, start=1):
                row["seq"] = base + offset
        conn.execute(self._insert_job, rows)
        ids = {row["trial_key"]: row["id"] for row in rows}
        keys = [] if new_study else [job.trial_key for job in unique]  # a new study's rows met no conflict
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            chunk = keys[start : start + _LOOKUP_CHUNK]
            ids.update(
                conn.execute(
                    select(jobs.c.trial_key, jobs.c.id).where(jobs.c.study_id == study_id, jobs.c.trial_key.in_(chunk))
                )
                .tuples()
                .all()
            )
        inserted = sum(ids[row["trial_key"]] == row["id"] for row in rows)
        if inserted and not new_study:
            self.study_rows.count_enqueued(conn, study_id, inserted)
        return [ids[job.trial_key] for job in new_jobs]

    def discard_study(self, study_id: str) -> None:
        """Delete a study and its jobs (a submission that failed after it was stored)."""

        def txn(conn: Connection) -> None:
            conn.execute(jobs.delete().where(jobs.c.study_id == study_id))
            self.study_rows.delete(conn, study_id)

        self.transactions.run(txn)

    def requeue_study(self, study_id: str, renumber: Mapping[int, int] | None = None) -> int:
        """Resume a study (the later command wins): clear its cancellation, store it as running
        again, and requeue with fresh attempts (no owner, lease or finish time, no pending
        cancellation) every job that failed or was cancelled, and every running job whose
        cancellation was pending, wherever its holder is (a dead worker's lease, expired or not; a
        live holder is fenced off and the job resumes from its newest checkpoint). Succeeded and
        pruned jobs stay. ``renumber`` moves jobs from Optuna trial numbers (keys) to new trials
        (values). Returns how many jobs were requeued."""
        requeue = or_(
            jobs.c.status.in_([JobStatus.CANCELLED.value, JobStatus.FAILED.value]),
            and_(jobs.c.status == JobStatus.RUNNING, jobs.c.cancel_requested.is_(True)),
        )

        def txn(conn: Connection) -> int:
            if not self.study_rows.mark_running(conn, study_id):
                raise KeyError(f"unknown study {study_id!r}")
            held = conn.execute(
                select(jobs.c.id, jobs.c.attempt)
                .where(
                    jobs.c.study_id == study_id, jobs.c.status == JobStatus.RUNNING, jobs.c.cancel_requested.is_(True)
                )
                .with_for_update()
            ).all()
            for job in held:
                self._log_end(conn, job.id, job.attempt, AttemptOutcome.RELEASED, "requeued by a resume")
            if renumber:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.study_id == study_id, jobs.c.optuna_trial_number.in_(list(renumber)))
                    .values(optuna_trial_number=case(renumber, value=jobs.c.optuna_trial_number))
                )
            requeued = conn.execute(
                update(jobs)
                .where(jobs.c.study_id == study_id, requeue)
                .values(
                    status=JobStatus.QUEUED.value,
                    cancel_requested=False,
                    failures=0,
                    owner=None,
                    lease_expires_at=None,
                    finished_at=None,
                )
            ).rowcount
            self.study_rows.settle(conn, study_id)  # a finished study with nothing to redo stays finished
            return requeued

        return self.transactions.run(txn)

    # -- workers ----------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        lease_s: float,
        *,
        gpus_free: int | None = None,
        room_mib: Sequence[int] | None = None,
    ) -> ClaimedJob | None:
        """Atomically take a queued job of the highest priority (needing at most ``gpus_free`` GPUs
        if given), fairly across owners (see ``_build_claim``; one owner's jobs: oldest first),
        under a lease of ``lease_s`` seconds; None if there is none.

        ``room_mib`` (with ``gpus_free``) lists the memory left on each GPU with a free slot: then
        only a job whose estimate per process (``gpu_memory_mib``, else
        :data:`UNESTIMATED_GPU_MEMORY_MIB`) fits on as many of those GPUs as it needs is taken."""
        params: dict[str, Any] = {"p_worker": worker_id, "p_gpus_free": gpus_free}
        if gpus_free is None:
            statement = self._claim_any
        elif not room_mib:
            statement = self._claim_gpus
        else:
            rooms = sorted(room_mib, reverse=True)
            if len(rooms) not in self._claim_fitting:
                self._claim_fitting[len(rooms)] = self._build_claim(gpus_filter=True, rooms=len(rooms))
            statement = self._claim_fitting[len(rooms)]
            params.update({f"p_room_{k}": room for k, room in enumerate(rooms, start=1)})

        def txn(conn: Connection) -> ClaimedJob | None:
            row = conn.execute(statement, {**params, **self.transactions.clock(lease_s)}).first()
            if row is None:
                return None
            if not self._pg:
                conn.execute(
                    attempts.insert(),
                    {
                        "job_id": row.id,
                        "attempt": row.attempt,
                        "worker": worker_id,
                        "started_at": row.started_at,
                    },
                )
            return ClaimedJob(**{f.name: row._mapping[f.name] for f in fields(ClaimedJob)})

        return self.transactions.run(txn, single=True)

    def heartbeat(self, job_id: str, attempt: int, lease_s: float) -> Heartbeat:
        """Extend the lease of a held job to ``lease_s`` from now; says whether to go on."""
        params = {"p_id": job_id, "p_attempt": attempt}

        def txn(conn: Connection) -> Heartbeat:
            cancel = conn.execute(self._heartbeat, {**params, **self.transactions.clock(lease_s)}).scalar()
            if cancel is None:
                return Heartbeat.LOST
            return Heartbeat.CANCEL if cancel else Heartbeat.OK

        return self.transactions.run(txn, single=True)

    def complete(self, job_id: str, attempt: int, result: dict[str, Any]) -> bool:
        """Record success with ``result`` if ``attempt`` holds the job; False for a stale attempt
        (nothing changes). A repeat by the same attempt returns True and keeps the first result."""
        return self._finish(job_id, attempt, JobStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, result)

    def mark_pruned(self, job_id: str, attempt: int, result: dict[str, Any]) -> bool:
        """End a held job as pruned (Optuna stopped it early), keeping ``result``."""
        return self._finish(job_id, attempt, JobStatus.PRUNED, AttemptOutcome.PRUNED, result)

    def mark_cancelled(self, job_id: str, attempt: int) -> bool:
        """End a held job as cancelled (the worker stopped it after a CANCEL heartbeat)."""
        return self._finish(job_id, attempt, JobStatus.CANCELLED, AttemptOutcome.CANCELLED)

    def fail(self, job_id: str, attempt: int, error: str, *, retryable: bool = True) -> JobStatus | None:
        """Record a failed attempt (``failures`` + 1, ``last_error`` kept): requeued while attempts
        remain and ``retryable``, else failed (cancelled if cancellation was requested). Returns the
        new status, or None if ``attempt`` no longer holds the job."""

        def txn(conn: Connection) -> tuple[JobStatus, str] | None:
            job = self._held(conn, job_id, attempt)
            if job is None:
                return None
            status = self._end_attempt(
                conn,
                job,
                counts_as_failure=True,
                requeue=retryable,
                outcome=AttemptOutcome.FAILED,
                error=error,
            )
            return status, job.study_id

        ended = self.transactions.run(txn)
        if ended is None:
            return None
        if ended[0] != JobStatus.QUEUED:
            self._settle(ended[1])
        return ended[0]

    def release(self, job_id: str, attempt: int, reason: str) -> bool:
        """Give a held job back (graceful shutdown) without using up an attempt; it is requeued,
        or cancelled if that was requested. False if ``attempt`` no longer holds it."""

        def txn(conn: Connection) -> tuple[bool, str | None]:
            job = self._held(conn, job_id, attempt)
            if job is None:
                return False, None
            status = self._end_attempt(
                conn,
                job,
                counts_as_failure=False,
                requeue=True,
                outcome=AttemptOutcome.RELEASED,
                error=reason,
            )
            return True, None if status == JobStatus.QUEUED else job.study_id

        done, ended_in = self.transactions.run(txn)
        if ended_in is not None:
            self._settle(ended_in)
        return done

    def set_mlflow_run(self, job_id: str, attempt: int, run_id: str) -> bool:
        """Remember the MLflow run of a held job (a retry resumes it); False if not held."""

        def txn(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    update(jobs).where(*_HELD).values(mlflow_run_id=run_id),
                    {"p_id": job_id, "p_attempt": attempt},
                ).rowcount
            )

        return self.transactions.run(txn)

    def reclaim_expired(self) -> list[Reclaimed]:
        """Take back running jobs whose lease expired (their worker is gone): each counts as a
        failed attempt, requeued, or failed with "lease expired (worker X)" after ``max_attempts``
        (cancelled if its cancellation was pending). Then settles every running study that has no
        active job left (also one whose last job's finisher died before settling it). Returns the
        jobs reclaimed and where each went."""

        def txn(conn: Connection) -> list[Reclaimed]:
            expired = conn.execute(
                select(jobs)
                .where(_status_is(jobs, JobStatus.RUNNING), jobs.c.lease_expires_at < self._now)
                .with_for_update(skip_locked=True),
                self.transactions.clock(),
            ).all()
            return [
                Reclaimed(
                    job.id,
                    job.study_id,
                    self._end_attempt(
                        conn,
                        job,
                        counts_as_failure=True,
                        requeue=True,
                        outcome=AttemptOutcome.EXPIRED,
                        error=f"lease expired (worker {job.owner})",
                    ),
                )
                for job in expired
            ]

        reclaimed = self.transactions.run(txn)
        for study_id in self.transactions.run(self.study_rows.settleable, read_only=True):
            self.transactions.run(lambda conn: self.study_rows.settle(conn, study_id))
        return reclaimed

    # -- cancellation -----------------------------------------------------------------------

    def cancel_job(self, job_id: str) -> JobStatus | None:
        """Cancel a job: queued -> cancelled now; running -> flagged (the worker sees CANCEL at
        its next heartbeat). Returns the job's status afterwards, None for an unknown job."""

        def txn(conn: Connection) -> tuple[JobStatus, str] | None:
            job = conn.execute(
                select(jobs.c.status, jobs.c.study_id).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if job is None:
                return None
            status = job.status
            if status == JobStatus.QUEUED:
                conn.execute(
                    update(jobs).where(jobs.c.id == job_id).values(**_CANCELLED, finished_at=self._now),
                    self.transactions.clock(),
                )
                return JobStatus.CANCELLED, job.study_id
            if status == JobStatus.RUNNING:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
            return JobStatus(status), job.study_id

        ended = self.transactions.run(txn)
        if ended is None:
            return None
        if ended[0] == JobStatus.CANCELLED:
            self._settle(ended[1])
        return ended[0]

    def cancel_study(self, study_id: str) -> CancelResult:
        """Store the study as cancelled, cancel its queued jobs and ask its running jobs to stop."""

        def txn(conn: Connection) -> CancelResult:
            self.study_rows.mark_cancelled(conn, study_id)
            cancelled = conn.execute(
                update(jobs)
                .where(jobs.c.study_id == study_id, jobs.c.status == JobStatus.QUEUED)
                .values(**_CANCELLED, finished_at=self._now),
                self.transactions.clock(),
            ).rowcount
            signalled = conn.execute(
                update(jobs)
                .where(
                    jobs.c.study_id == study_id,
                    jobs.c.status == JobStatus.RUNNING,
                    jobs.c.cancel_requested.is_(False),
                )
                .values(cancel_requested=True)
            ).rowcount
            return CancelResult(cancelled=cancelled, signalled=signalled)

        return self.transactions.run(txn)

    # -- reads ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobInfo | None:
        """One job, or None."""

        def txn(conn: Connection) -> JobInfo | None:
            row = conn.execute(select(*_columns(JobInfo, jobs)).where(jobs.c.id == job_id)).first()
            return None if row is None else _job_info(row)

        return self.transactions.run(txn, read_only=True)

    def list_jobs(
        self,
        study_id: str,
        *,
        statuses: Iterable[JobStatus] | None = None,
        limit: int | None = None,
        offset: int = 0,
        config_keys: Sequence[str] | None = None,
    ) -> list[JobInfo]:
        """A study's jobs in enqueue order, optionally only those in ``statuses``; with
        ``config_keys``, each ``config`` holds only those keys (read by JSON path: a study's
        summaries need not load every trial's config)."""
        if statuses is None and limit is None and not offset:
            return self.transactions.run(lambda conn: self.read_jobs(conn, study_id, config_keys), read_only=True)
        query = select(*_job_columns(config_keys)).where(jobs.c.study_id == study_id)
        if statuses is not None:
            query = query.where(jobs.c.status.in_([JobStatus(s).value for s in statuses]))
        query = query.order_by(jobs.c.seq).offset(offset).limit(limit)
        return self.transactions.run(lambda conn: [_job_info(r) for r in conn.execute(query)], read_only=True)

    def read_jobs(self, conn: Connection, study_id: str, config_keys: Sequence[str] | None = None) -> list[JobInfo]:
        """All of a study's jobs in enqueue order (as :meth:`list_jobs` reads them), in the caller's transaction."""
        query = _study_jobs(None if config_keys is None else tuple(config_keys))
        return [_job_info(r) for r in conn.execute(query, {"p_study": study_id})]

    def list_attempts(self, job_id: str) -> list[AttemptInfo]:
        """The audit trail of one job, oldest attempt first."""
        query = select(*_columns(AttemptInfo, attempts)).where(attempts.c.job_id == job_id)

        def txn(conn: Connection) -> list[AttemptInfo]:
            rows = conn.execute(query.order_by(attempts.c.attempt)).mappings()
            return [AttemptInfo(**{**r, "outcome": r["outcome"] and AttemptOutcome(r["outcome"])}) for r in rows]

        return self.transactions.run(txn, read_only=True)

    def has_active_jobs(self, max_gpus: int | None = None) -> bool:
        """Whether a job may still come to a worker: one queued or running (a running one may be
        handed back) in a running study, neither being cancelled; with ``max_gpus``, only jobs
        needing at most that many GPUs count."""
        query = (
            select(jobs.c.id)
            .join(studies, studies.c.id == jobs.c.study_id)
            .where(
                jobs.c.status.in_(_ACTIVE_VALUES),
                jobs.c.cancel_requested.is_(False),
                studies.c.status == StudyStatus.RUNNING,
                studies.c.cancel_requested.is_(False),
            )
            .limit(1)
        )
        if max_gpus is not None:
            query = query.where(jobs.c.gpus <= max_gpus)
        return self.transactions.run(lambda conn: conn.execute(query).first() is not None, read_only=True)

    def counts(self, study_id: str) -> dict[JobStatus, int]:
        """Number of the study's jobs in each status (every status present, zeros included)."""

        def txn(conn: Connection) -> dict[JobStatus, int]:
            rows = conn.execute(
                select(jobs.c.status, func.count()).where(jobs.c.study_id == study_id).group_by(jobs.c.status)
            ).tuples()
            result = dict.fromkeys(JobStatus, 0)
            result.update({JobStatus(status): n for status, n in rows})
            return result

        return self.transactions.run(txn, read_only=True)

    def counts_of(self, study_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Number of each study's jobs in each status it has (one grouped query)."""
        found: dict[str, dict[str, int]] = {study_id: {} for study_id in study_ids}
        if not found:
            return found
        query = (
            select(jobs.c.study_id, jobs.c.status, func.count())
            .where(jobs.c.study_id.in_(list(found)))
            .group_by(jobs.c.study_id, jobs.c.status)
        )

        def txn(conn: Connection) -> dict[str, dict[str, int]]:
            for study_id, status, n in conn.execute(query):
                found[study_id][status] = n
            return found

        return self.transactions.run(txn, read_only=True)

    def trial_active(self, study_id: str, optuna_trial_number: int) -> bool:
        """Whether a job (a seed) of the study's Optuna trial ``optuna_trial_number`` is still active."""
        query = (
            select(jobs.c.id)
            .where(
                jobs.c.study_id == study_id,
                jobs.c.optuna_trial_number == optuna_trial_number,
                jobs.c.status.in_(_ACTIVE_VALUES),
            )
            .limit(1)
        )
        return self.transactions.run(lambda conn: conn.execute(query).first() is not None, read_only=True)
