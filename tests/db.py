"""Database fixtures: every test using ``db_url`` runs on SQLite and on PostgreSQL.

The PostgreSQL server (``KRPO_TEST_PG_ADMIN_URL``, by default the local one) must be reachable:
a missing server fails the PostgreSQL tests rather than skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.engine import make_url

from krpo_bench.service.db import Study, StudyKind, make_engine, upgrade
from krpo_bench.service.optuna_store import dispose_optuna_storage
from krpo_bench.service.queue import JobQueue

PG_ADMIN_URL = os.environ.get("KRPO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_connect() -> psycopg.Connection:
    url = make_url(PG_ADMIN_URL)
    try:
        return psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL server not reachable at {PG_ADMIN_URL}: {err}", pytrace=False)


def create_pg_database() -> str:
    """Create an empty throw-away database on the test server and return its URL."""
    name = f"krpo_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a database made by ``create_pg_database``, closing any connections still open (this
    process's cached Optuna storage of it first: its pool would keep dead connections open)."""
    dispose_optuna_storage(url)
    name = make_url(url).database
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_connections(url: str) -> int:
    """Kill every server connection to the database at ``url`` (as a server restart would)."""
    with _admin_connect() as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (make_url(url).database,),
        ).fetchone()
    return int(killed[0]) if killed else 0


def database(name: str, *values: object) -> Any:
    """One case of ``db_url`` (``"sqlite"`` or ``"postgresql"``, marked ``postgres``), with ``values``
    for the test's other parameters: see :func:`on_databases`."""
    marks = [pytest.mark.postgres] if name == "postgresql" else []
    return pytest.param(name, *values, marks=marks, id="-".join(map(str, (name, *values))))


def on_databases(names: str, cases: list[Any]) -> pytest.MarkDecorator:
    """Run a test on the ``db_url`` cases given (``database(...)``) instead of on both databases:
    ``names`` is ``"db_url"`` or ``"db_url,<other parameters>"``. For end-to-end scenarios whose
    database statements the queue's own tests already run on both: each scenario runs on one, and
    the scenarios of a module alternate so that both databases see several."""
    return pytest.mark.parametrize(names, cases, indirect=["db_url"])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database: a SQLite file in ``tmp_path``, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'krpo-test.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` with the schema migrated to head."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def queue(engine: Engine) -> JobQueue:
    """A job queue on the migrated test database."""
    return JobQueue(engine)


def add_study(engine: Engine, name: str = "study") -> str:
    """Insert a minimal ablation study row, its MLflow records already made, and return its id."""
    study_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(Study).values(
                id=study_id,
                name=name,
                kind=StudyKind.ABLATION.value,
                spec={},
                mlflow_experiment_id="0",
                mlflow_parent_run_id="",
                mlflow_pending=False,
            )
        )
    return study_id


@pytest.fixture
def study_id(engine: Engine) -> str:
    """Id of a fresh study in the test database."""
    return add_study(engine)
