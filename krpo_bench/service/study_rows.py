"""The ``studies`` table: every statement on a study row lives here (the layer contract checks it).

:class:`StudyRows` has two kinds of methods. Those taking a ``Connection`` run inside the caller's
transaction: the job queue calls them in its own job-end, cancel, requeue and enqueue transactions,
so a study row changes atomically with its jobs and in the queue's lock order (a transaction that
locks a study row and job rows locks the study row first; settling locks only the study row). The
others run a transaction of their own (writes, retried through :class:`Transactions`) or read on a
deferred connection (:func:`read_connection`: never waiting for a writer).

Settling: a running study's stored status becomes final once none of its jobs is active and it holds
all it will (``enqueued_jobs`` reaches ``total_jobs``): failed when a job failed, else cancelled when
a job was cancelled, else succeeded (pruned jobs are a search's outcome).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Row, Table, bindparam, case, exists, func, or_, select
from sqlalchemy.engine import Connection

from krpo_bench.service.db import ACTIVE_JOB_STATUSES, Job, JobStatus, Study, StudyStatus, read_connection, utcnow
from krpo_bench.service.transactions import Transactions

studies = cast(Table, Study.__table__)
jobs = cast(Table, Job.__table__)

_ACTIVE_VALUES = sorted(status.value for status in ACTIVE_JOB_STATUSES)


def _settleable(pg: bool) -> tuple[ColumnElement[bool], ...]:
    """Where-clause (on ``studies``) of "running, holds all the jobs it will, none of them active".

    "None active" is one probe of ix_jobs_study_queue per active status (queued first), each
    stopping at the first entry whatever the study's size: in the index's order, so no plan scans
    the study's jobs (PostgreSQL, given LIMIT 1 and no order, scanned the table from its start, past
    every job that had ended), and backwards, from the newest job: the entries a scan from the
    oldest would pass first are those of the jobs claimed first, dead until a vacuum removes them.
    On PostgreSQL the study is a range the planner cannot turn into an equality, which keeps it in
    the order (else ix_jobs_claim, filtered on the study, would do)."""
    of_study = (
        (jobs.c.study_id >= studies.c.id, jobs.c.study_id <= studies.c.id) if pg else (jobs.c.study_id == studies.c.id,)
    )

    def none(status: JobStatus) -> ColumnElement[bool]:
        return (
            select(jobs.c.id)
            .where(*of_study, jobs.c.status == status)
            .order_by(jobs.c.study_id.desc(), jobs.c.priority, jobs.c.seq.desc())
            .limit(1)
            .scalar_subquery()
            .is_(None)
        )

    return (
        studies.c.status == StudyStatus.RUNNING,
        studies.c.enqueued_jobs >= studies.c.total_jobs,
        *(none(status) for status in sorted(ACTIVE_JOB_STATUSES)),
    )


class StudyRows:
    """The study rows of one job database (see the module docstring)."""

    def __init__(self, transactions: Transactions) -> None:
        self.tx = transactions
        self._settleable = _settleable(transactions.pg)
        self._maybe_settled = select(studies.c.id).where(studies.c.id == bindparam("p_study"), *self._settleable)
        self._insert = studies.insert()
        self._by_id = select(studies).where(studies.c.id == bindparam("p_study"))

    # -- inside the caller's transaction ----------------------------------------------------

    def insert(self, conn: Connection, values: dict[str, Any], *, enqueued: int) -> None:
        """Store a new study row (``values``, with its ``id``) that holds ``enqueued`` jobs."""
        conn.execute(self._insert, {**values, "enqueued_jobs": enqueued})

    def read(self, conn: Connection, study_id: str) -> Row[Any] | None:
        """The study's row, or None."""
        return conn.execute(self._by_id, {"p_study": study_id}).first()

    def lock_for_jobs(self, conn: Connection, study_id: str) -> bool:
        """Lock the study row for adding jobs (a key-share lock: first, before any job row) and
        return whether its cancellation was requested; KeyError for an unknown study."""
        study = conn.execute(
            select(studies.c.cancel_requested).where(studies.c.id == study_id).with_for_update(key_share=True)
        ).first()
        if study is None:
            raise KeyError(f"unknown study {study_id!r}")
        return bool(study.cancel_requested)

    def count_enqueued(self, conn: Connection, study_id: str, inserted: int) -> None:
        """Add ``inserted`` new jobs to the study's ``enqueued_jobs``."""
        conn.execute(
            studies.update().where(studies.c.id == study_id).values(enqueued_jobs=studies.c.enqueued_jobs + inserted)
        )

    def may_settle(self, conn: Connection, study_id: str) -> bool:
        """Whether the study looks settled (running, all its jobs there, none active): an index
        probe, no lock."""
        return conn.execute(self._maybe_settled, {"p_study": study_id}).first() is not None

    def settleable(self, conn: Connection) -> list[str]:
        """Ids of the running studies that hold all their jobs, none of them active."""
        return list(conn.execute(select(studies.c.id).where(*self._settleable)).scalars())

    def settle(self, conn: Connection, study_id: str) -> None:
        """Store a running study's final status once none of its jobs is active and it holds all
        it will (``total_jobs``): failed when one of its jobs failed, else cancelled when one was
        cancelled, else succeeded. The study row is locked first and the jobs read afterwards (a
        statement of its own, so it sees what committed while it waited for the lock)."""
        conn.execute(select(studies.c.id).where(studies.c.id == study_id).with_for_update())

        def any_job(status: JobStatus) -> ColumnElement[bool]:
            return exists().where(jobs.c.study_id == study_id, jobs.c.status == status)

        conn.execute(
            studies.update()
            .where(studies.c.id == study_id, *self._settleable)
            .values(
                status=case(
                    (any_job(JobStatus.FAILED), StudyStatus.FAILED.value),
                    (any_job(JobStatus.CANCELLED), StudyStatus.CANCELLED.value),
                    else_=StudyStatus.SUCCEEDED.value,
                ),
                updated_at=self.tx.now,
            ),
            self.tx.clock(),
        )

    def mark_cancelled(self, conn: Connection, study_id: str) -> None:
        """Store the study as cancelled, its cancellation requested."""
        conn.execute(
            studies.update()
            .where(studies.c.id == study_id)
            .values(cancel_requested=True, status=StudyStatus.CANCELLED.value, updated_at=self.tx.now),
            self.tx.clock(),
        )

    def mark_running(self, conn: Connection, study_id: str) -> bool:
        """Store the study as running again, its cancellation cleared (a resume); False if unknown."""
        return bool(
            conn.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .values(cancel_requested=False, status=StudyStatus.RUNNING.value, updated_at=self.tx.now),
                self.tx.clock(),
            ).rowcount
        )

    def delete(self, conn: Connection, study_id: str) -> None:
        """Delete the study row (its jobs first: the caller's)."""
        conn.execute(studies.delete().where(studies.c.id == study_id))

    # -- writes in a transaction of their own -----------------------------------------------

    def update(self, study_id: str, values: dict[str, Any]) -> None:
        """Store ``values`` on the study row (its ``updated_at`` too), in this process's turn of writers."""

        def txn(conn: Connection) -> None:
            conn.execute(studies.update().where(studies.c.id == study_id).values(**values, updated_at=utcnow()))

        self.tx.run(txn)

    def close(self, study_id: str, looks: list[dict[str, Any]]) -> None:
        """A sequential study's last look: store its looks, shrink its total to the jobs it holds
        (fewer than its most when comparisons were decided early) and settle it."""

        def txn(conn: Connection) -> None:
            conn.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .values(looks=looks, total_jobs=studies.c.enqueued_jobs, updated_at=utcnow())
            )
            self.settle(conn, study_id)

        self.tx.run(txn)

    # -- reads (deferred: they neither take nor wait for SQLite's write lock) ----------------

    def get(self, study_id: str) -> Row[Any] | None:
        """The study's row, or None."""
        with read_connection(self.tx.engine) as conn:
            return self.read(conn, study_id)

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> list[Row[Any]]:
        """Study rows newest first, optionally only those of a stored ``status``."""
        query = select(studies).order_by(studies.c.created_at.desc(), studies.c.id).limit(limit).offset(offset)
        if status is not None:
            query = query.where(studies.c.status == status)
        with read_connection(self.tx.engine) as conn:
            return list(conn.execute(query).all())

    def by_idempotency_key(self, key: str) -> str | None:
        """The id of the study submitted with ``key``, or None."""
        with read_connection(self.tx.engine) as conn:
            return conn.execute(select(studies.c.id).where(studies.c.idempotency_key == key)).scalar()

    def owner(self, study_id: str) -> str | None:
        """The id of the API token that submitted the study (None: no token, or no such study)."""
        with read_connection(self.tx.engine) as conn:
            return conn.execute(select(studies.c.owner).where(studies.c.id == study_id)).scalar()

    def owner_usage(self, owner: str, default_timeout_s: int) -> tuple[int, float]:
        """The queued and running jobs of ``owner``'s running studies and their timeouts summed
        (``default_timeout_s`` for a job without one). Such jobs exist in running studies only: the
        index on studies' status and the jobs' per-study index keep this proportional to them, not
        to the database."""
        query = (
            select(func.count(), func.coalesce(func.sum(func.coalesce(jobs.c.timeout_s, default_timeout_s)), 0))
            .select_from(jobs)
            .join(studies, studies.c.id == jobs.c.study_id)
            .where(
                studies.c.status == StudyStatus.RUNNING.value,
                studies.c.owner == owner,
                jobs.c.status.in_(_ACTIVE_VALUES),
            )
        )
        with read_connection(self.tx.engine) as conn:
            trials, seconds = conn.execute(query).one()
        return int(trials), float(seconds)

    def confirms(self, study_id: str) -> str | None:
        """The id of the study that ``study_id`` confirms on fresh seeds (None: it is no confirmation)."""
        with read_connection(self.tx.engine) as conn:
            return conn.execute(select(studies.c.confirms).where(studies.c.id == study_id)).scalar()

    def confirmations_of(self, study_id: str) -> list[str]:
        """Ids of the studies that confirm ``study_id`` on fresh seeds."""
        with read_connection(self.tx.engine) as conn:
            return list(conn.execute(select(studies.c.id).where(studies.c.confirms == study_id)).scalars())

    def pending_mlflow(self, limit: int) -> list[str]:
        """Ids of studies whose MLflow records are still to be created, oldest first."""
        with read_connection(self.tx.engine) as conn:
            return list(
                conn.execute(
                    select(studies.c.id)
                    .where(studies.c.mlflow_pending.is_(True))
                    .order_by(studies.c.created_at, studies.c.id)
                    .limit(limit)
                ).scalars()
            )

    def matching(self, ref: str, names: list[tuple[str, int]], prefix_limit: int) -> str | list[Row[Any]]:
        """What a study reference names, by the first rule that matches: the id ``ref``; for each
        ``(name, back)`` of ``names`` the ``back``-th older study of that name (0: the newest). Else
        the studies whose id starts with ``ref`` (``id``, ``name``, ``created_at``; newest first, at
        most ``prefix_limit``)."""
        with read_connection(self.tx.engine) as conn:
            if conn.execute(select(studies.c.id).where(studies.c.id == ref)).first() is not None:
                return ref
            for name, back in names:
                found = conn.execute(
                    select(studies.c.id)
                    .where(studies.c.name == name)
                    .order_by(studies.c.created_at.desc(), studies.c.id)
                    .offset(back)
                    .limit(1)
                ).scalar()
                if found is not None:
                    return found
            return list(
                conn.execute(
                    select(studies.c.id, studies.c.name, studies.c.created_at)
                    .where(studies.c.id.startswith(ref, autoescape=True))
                    .order_by(studies.c.created_at.desc(), studies.c.id)
                    .limit(prefix_limit)
                ).all()
            )

    def newer_of_name(self, study_id: str, name: str, created_at: datetime) -> int:
        """How many studies of ``name`` were submitted after the study ``study_id`` (created at ``created_at``)."""
        with read_connection(self.tx.engine) as conn:
            return conn.execute(
                select(func.count())
                .select_from(studies)
                .where(
                    studies.c.name == name,
                    or_(
                        studies.c.created_at > created_at,
                        (studies.c.created_at == created_at) & (studies.c.id < study_id),
                    ),
                )
            ).scalar_one()
