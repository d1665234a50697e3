"""Migrations: upgrade on an empty database, idempotent re-runs, data kept, schema == ORM models."""

from __future__ import annotations

import inspect
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, text
from sqlalchemy import inspect as inspect_db

from krpo_bench.service.db import Base, alembic_config, make_engine, upgrade, utcnow
from krpo_bench.service.queue import UNESTIMATED_GPU_MEMORY_MIB, JobQueue
from tests.db import add_study

TABLES = {"studies", "jobs", "job_attempts", "workers", "alembic_version"}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _version(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_empty_database_and_rerun(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        assert TABLES <= set(inspect_db(engine).get_table_names())
        assert _version(db_url) == _head()

        queue = JobQueue(engine)
        study_id = add_study(engine, "kept")
        job_id = queue.enqueue(study_id, "t", {"lr": 1e-4})
        upgrade(engine)  # a no-op at head
        upgrade(db_url)
        assert _version(db_url) == _head()
        job = queue.get_job(job_id)
        assert job is not None and job.config == {"lr": 1e-4}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM studies")).scalar_one() == "kept"
    finally:
        engine.dispose()


def test_concurrent_upgrades_are_safe(db_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upgrade, [db_url] * 4))
    assert _version(db_url) == _head()


def test_connecting_while_a_fresh_sqlite_file_is_being_switched_to_wal_waits(tmp_path: Path) -> None:
    """The cause of the concurrent upgrades' rare "database is locked" at connect: the connect-time
    ``PRAGMA journal_mode = WAL`` on a fresh (rollback-journal) file upgrades a read lock to a write
    lock, and SQLite answers SQLITE_BUSY at once there, without the busy timeout, while another
    connection holds the write lock (as one switching the same file does). Connecting must wait."""
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a rollback-journal writer, e.g. another connection mid-switch
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        release.join()
        engine.dispose()
        holder.close()


def test_orm_metadata_matches_migrated_schema(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrades_never_drop_data() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    for revision in script.walk_revisions():
        source = inspect.getsource(revision.module.upgrade)
        assert not re.search(r"\bdrop_(table|column)\b|\bDROP\s+(TABLE|COLUMN)\b", source, re.I), (
            f"revision {revision.revision} drops data in upgrade()"
        )


def test_upgrade_from_0001_keeps_queued_jobs_which_then_count_as_unestimated(db_url: str) -> None:
    upgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        study_id = "old-study"
        with engine.begin() as conn:
            studies = Table("studies", MetaData(), autoload_with=conn)  # as revision 0001 made it
            conn.execute(
                studies.insert().values(
                    id=study_id,
                    name="before estimates",
                    kind="ablation",
                    spec={},
                    status="running",
                    priority=0,
                    cancel_requested=False,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
            jobs = Table("jobs", MetaData(), autoload_with=conn)  # the table as revision 0001 made it
            assert "gpu_memory_mib" not in jobs.c
            conn.execute(
                jobs.insert().values(
                    id="old-job",
                    seq=1,
                    study_id=study_id,
                    trial_key="t",
                    config={"lr": 1e-4},
                    status="queued",
                    priority=0,
                    attempt=0,
                    failures=0,
                    max_attempts=3,
                    cancel_requested=False,
                    gpus=2,
                    created_at=utcnow(),
                )
            )
        upgrade(engine)
        assert _version(db_url) == _head()
        queue = JobQueue(engine)
        job = queue.get_job("old-job")
        assert job is not None and (job.config, job.gpus, job.gpu_memory_mib) == ({"lr": 1e-4}, 2, None)
        assert queue.claim("w", 30, gpus_free=2, room_mib=[UNESTIMATED_GPU_MEMORY_MIB] * 2).id == "old-job"
    finally:
        engine.dispose()
