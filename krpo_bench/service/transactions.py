"""Transactions on the job database, shared by the job queue, the study rows and the worker registry.

One :class:`Transactions` per engine and process: it runs a unit of work in one transaction, retried
with backoff on transient errors (SQLite "database is locked", PostgreSQL serialisation failures,
deadlocks and lost connections); it serialises this process's SQLite writers on one lock (SQLite
takes one writer at a time and makes the others sleep in its busy handler) and lets concurrent ones
share a COMMIT (:class:`GroupCommit`). Timestamps come from the database server's clock on
PostgreSQL and from the local clock in UTC on SQLite (see :meth:`Transactions.clock`).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, Interval, Table, bindparam, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from krpo_bench.service.db import READ_ONLY, UTCDateTime, utcnow
from krpo_bench.service.group_commit import GroupCommit

T = TypeVar("T")

_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})


def is_transient(err: DBAPIError) -> bool:
    """Whether retrying the whole transaction may succeed."""
    if err.connection_invalidated:
        return True
    if isinstance(err.orig, sqlite3.Error):
        return err.orig.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED")
    sqlstate = getattr(err.orig, "sqlstate", None)
    if sqlstate is None:  # PostgreSQL: no connection could be made (server down or restarting)
        return isinstance(err, OperationalError)
    return sqlstate in _RETRYABLE_SQLSTATES or sqlstate.startswith("08")


def is_database_outage(err: BaseException) -> bool:
    """Whether ``err`` is a transient database error: raised by SQLAlchemy, or wrapped by Optuna's
    RDB storage (a ``StorageInternalError`` caused by one)."""
    current: BaseException | None = err
    while current is not None:
        if isinstance(current, DBAPIError):
            return is_transient(current)
        current = current.__cause__
    return False


class Transactions:
    """Retried transactions on one engine (see the module docstring)."""

    def __init__(self, engine: Engine, *, max_retries: int = 8) -> None:
        self.engine = engine
        self.max_retries = max_retries
        self.pg = engine.dialect.name == "postgresql"
        self._write_lock = nullcontext() if self.pg else threading.Lock()
        self._group_commit = None if self.pg else GroupCommit(engine, self._write_lock, is_transient, max_retries)
        self.now: ColumnElement[datetime]
        """The current time in a statement: bound by :meth:`clock`'s parameters."""
        self.lease_until: ColumnElement[datetime]
        """``lease_s`` seconds from now in a statement: bound by ``clock(lease_s)``'s parameters."""
        if self.pg:
            self.now = func.now()
            self.lease_until = func.now() + bindparam("lease", type_=Interval())
        else:
            self.now = bindparam("now", type_=UTCDateTime())
            self.lease_until = bindparam("lease_until", type_=UTCDateTime())

    def clock(self, lease_s: float | None = None) -> dict[str, Any]:
        """Parameters for ``now`` and ``lease_until``: none on PostgreSQL (server clock)."""
        if self.pg:
            return {} if lease_s is None else {"lease": timedelta(seconds=lease_s)}
        now = utcnow()
        params: dict[str, Any] = {"now": now}
        if lease_s is not None:
            params["lease_until"] = now + timedelta(seconds=lease_s)
        return params

    def run(self, fn: Callable[[Connection], T], *, read_only: bool = False, single: bool = False) -> T:
        """Run ``fn`` in one transaction, retried on transient errors. ``single`` marks work that
        is one atomic statement (plus reads): on PostgreSQL it runs in autocommit mode."""
        for retry in range(self.max_retries + 1):
            try:
                with nullcontext() if read_only else self._write_lock, self.engine.connect() as conn:
                    if read_only:
                        conn.execution_options(**{READ_ONLY: True})
                    if single and self.pg:
                        conn.execution_options(isolation_level="AUTOCOMMIT")
                    with conn.begin():
                        return fn(conn)
            except DBAPIError as err:
                if retry == self.max_retries or not is_transient(err):
                    raise
                time.sleep(min(2.0, 0.02 * 2**retry) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def run_grouped(self, fn: Callable[[Connection], T]) -> T:
        """Like :meth:`run` for a write, but on SQLite sharing one COMMIT with the writers waiting
        at the same time (:class:`GroupCommit`)."""
        return self._group_commit.run(fn) if self._group_commit else self.run(fn)

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT of ``table`` (it has ``on_conflict_do_*``)."""
        return (postgresql if self.pg else sqlite).insert(table)
