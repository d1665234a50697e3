"""Database schema (SQLAlchemy 2 models), engine factory and migrations to head.

SQLite is the embedded default; PostgreSQL is the scale-out backend. Timestamps are stored as UTC
and always come back timezone-aware.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy import (
    false as sa_false,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "krpo_read_only"
"""Connection execution option: on SQLite, begin a deferred (read) transaction, not a write lock."""
_MIGRATION_LOCK_KEY = 0x6B72706F  # "krpo": PostgreSQL advisory lock held while migrating


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh random UUID as text (primary key of studies and jobs)."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC timestamp (naive on SQLite, ``timestamptz`` on PostgreSQL), read back tz-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StudyKind(StrEnum):
    ABLATION = "ablation"
    SEARCH = "search"
    PROBE = "probe"


class StudyStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"


ACTIVE_JOB_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
"""A job in one of these may still run; any other status is final."""
FINISHED_STUDY_STATUSES: frozenset[StudyStatus] = frozenset(
    {StudyStatus.SUCCEEDED, StudyStatus.FAILED, StudyStatus.CANCELLED}
)
"""A study in one of these has settled (its status is final until a resume)."""


class WorkerStatus(StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RELEASED = "released"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    PRUNED = "pruned"


def _in_values(enum: type[StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum)


def _only(status: JobStatus) -> dict[str, Any]:
    """Keyword arguments of a partial index over the jobs in ``status`` (PostgreSQL and SQLite). A
    query uses it when its condition names the status as a literal (``queue._status_is``), not a
    bound parameter."""
    where = text(f"status = '{status.value}'")
    return {"postgresql_where": where, "sqlite_where": where}


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON(none_as_null=True)}


class Study(Base):
    """One submitted study (an ablation grid or a parameter search)."""

    __tablename__ = "studies"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_in_values(StudyKind)})", name="kind"),
        Index("ix_studies_status_created", "status", "created_at"),
        Index("ix_studies_mlflow_pending", "mlflow_pending"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RUNNING.value)
    """Stored when it changes (submit, cancel, resume, extend; the queue settles it to succeeded or
    failed in the transaction that ends its last job), never derived on read."""
    total_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Jobs the study will hold when complete (a search: its budget times seeds per trial)."""
    enqueued_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Jobs the study holds now (kept by the queue as it inserts them): settling a study compares it
    with ``total_jobs`` instead of counting the study's jobs."""
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    optuna_study_name: Mapped[str | None] = mapped_column(String(255))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_pending: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_false())
    """Outbox marker: the MLflow experiment and parent run are still to be created (after submit)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(255))
    """Id of the API token that submitted the study (None: the CLI, or a server without tokens)."""
    looks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    """A sequential study's looks (``analysis.until_decided``), in order: the seeds each comparison had
    and what the look decided for it (None: no look yet, or not sequential)."""
    confirms: Mapped[str | None] = mapped_column(String(36))
    """The id of the study this one confirms on fresh seeds (``krpo-bench confirm``), else None."""


class Job(Base):
    """One trial of a study, claimed by workers under a lease and fenced by ``attempt``."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "trial_key"),
        CheckConstraint(f"status IN ({_in_values(JobStatus)})", name="status"),
        Index("ix_jobs_lease", "lease_expires_at", **_only(JobStatus.RUNNING)),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    trial_key: Mapped[str] = mapped_column(String(255))
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_s: Mapped[float | None]
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    gpu_memory_mib: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


# The claim query's indexes: queued jobs, highest priority first, then FIFO (partial: only queued rows,
# so neither running nor ended jobs are in its way); the same within one study (a fair claim takes each
# active study's next job from it); and each study's latest claim.
Index("ix_jobs_claim", Job.priority.desc(), Job.seq, **_only(JobStatus.QUEUED))
Index("ix_jobs_study_queue", Job.study_id, Job.status, Job.priority.desc(), Job.seq)
Index("ix_jobs_study_started", Job.study_id, Job.started_at)


class JobAttempt(Base):
    """Audit trail: one row per claim of a job, closed with its outcome."""

    __tablename__ = "job_attempts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    """A registered worker process and what it is running."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[list[int]] = mapped_column(JSON)
    slots: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=WorkerStatus.ACTIVE.value)
    current_jobs: Mapped[list[str]] = mapped_column(JSON)


def normalize_url(url: str | URL) -> URL:
    """Parse ``url``; plain ``postgresql://`` (or ``postgres://``) URLs get the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code & 0xFF) == sqlite3.SQLITE_BUSY if code is not None else "database is locked" in str(exc)


def _switch_to_wal(dbapi_connection: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection is switching the same file.

    WAL mode is stored in the file, so this is a read and a no-op once any connection has switched
    it. The switch itself (a fresh file, in rollback-journal mode) reads the header under a shared
    lock and then upgrades to a write lock, and SQLite does not call the busy handler for an upgrade
    from a read transaction (``sqlite3BtreeSetVersion``; waiting could deadlock): when several
    connections open a fresh file at once, all but one get SQLITE_BUSY ("database is locked") at
    once, whatever the busy timeout. The failed statement has released its lock, so wait for the
    winner and try again (then finding WAL set) within the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        finally:
            cursor.close()
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` so write transactions serialise.

    The documented SQLAlchemy recipe: the driver's own BEGIN handling is disabled and SQLAlchemy's
    ``begin`` event emits the BEGIN. Connections marked with the ``READ_ONLY`` execution option take
    a deferred BEGIN, so reads never wait for the write lock.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()
        _switch_to_wal(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def read_connection(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite its transactions begin deferred, so they neither take
    nor wait for the write lock (WAL readers see the last commit)."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` set up for the job queue (see module docstring); ``kwargs`` go to
    ``create_engine``."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def alembic_config(engine_or_url: Engine | str | URL | None = None) -> Config:
    """An alembic ``Config`` pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine_or_url is not None:
        url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
        url = normalize_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*['\"]?([^'\"\n]*)", re.M)


def packaged_head() -> str:
    """The newest packaged migration, read from the version files (alembic's own head; a test
    checks they agree)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text()))
        revisions.add(found["revision"])
        parents.add(found.get("down_revision"))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the packaged migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _at_packaged_head(engine: Engine) -> bool:
    """Whether the database is already migrated to :func:`packaged_head`."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return versions == [packaged_head()]


ALEMBIC_LOCK = threading.Lock()
"""alembic keeps a running migration's context in module globals, so one migration at a time per
process: ours, or MLflow's when it sets up a new SQLite tracking store (hold it around that too)."""


def upgrade(engine_or_url: Engine | str | URL, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (head by default); idempotent and safe to call from
    several processes at once (one migrates, the others wait and then find nothing to do)."""
    owns_engine = not isinstance(engine_or_url, Engine)
    engine = make_engine(engine_or_url) if owns_engine else engine_or_url
    try:
        if revision == "head" and _at_packaged_head(engine):
            return  # the usual case: nothing to do, and alembic (half a second to import) stays unloaded
        from alembic import command

        config = alembic_config()
        with ALEMBIC_LOCK, engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        if owns_engine:
            engine.dispose()
