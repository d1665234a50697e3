"""Migrations: upgrade on an empty database, idempotent re-runs, data kept, schema == ORM models."""

from __future__ import annotations

import inspect
import re
from concurrent.futures import ThreadPoolExecutor

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect as inspect_db
from sqlalchemy import text

from krpo_bench.service.db import Base, alembic_config, make_engine, upgrade
from krpo_bench.service.queue import JobQueue
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
