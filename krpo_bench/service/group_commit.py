"""Group commit for SQLite: concurrent write transactions of one process share one COMMIT.

A SQLite commit in WAL mode waits for an fsync (milliseconds) while it holds the database's only
write lock, so concurrent writers queue behind each other's fsyncs. Here each writer appends its
work to a shared list and takes the process's write lock; whoever gets the lock runs every piece of
work still waiting, each in its own SAVEPOINT, and commits once. A writer returns (or raises) only
after the COMMIT that holds its work, so nothing is acknowledged before it is durable, and one
writer's error rolls back its savepoint alone.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

MAX_BATCH = 64
"""Most pieces of work one COMMIT carries (bounds the first writer's wait)."""


@dataclass(eq=False)
class _Work(Generic[T]):
    fn: Callable[[Connection], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """Runs write transactions on ``engine`` so that those waiting at the same time commit together.

    ``write_lock`` serialises this process's writers; ``is_transient`` says which database errors
    make the whole batch worth retrying (at most ``max_retries`` times, with jittered backoff)."""

    def __init__(
        self,
        engine: Engine,
        write_lock: AbstractContextManager[Any],
        is_transient: Callable[[DBAPIError], bool],
        max_retries: int,
    ) -> None:
        self.engine = engine
        self._write_lock = write_lock
        self._is_transient = is_transient
        self._max_retries = max_retries
        self._waiting: list[_Work[Any]] = []
        self._mutex = threading.Lock()

    def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` inside a transaction that is committed before this returns."""
        work: _Work[T] = _Work(fn)
        with self._mutex:
            self._waiting.append(work)
        while not work.done.is_set():
            with self._write_lock:
                if work.done.is_set():
                    break
                with self._mutex:
                    batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                self._commit(batch)
        if work.error is not None:
            raise work.error
        return work.result

    def _commit(self, batch: list[_Work[Any]]) -> None:
        """Run ``batch`` in one transaction (a savepoint each), retried as a whole on transient errors."""
        try:
            for retry in range(self._max_retries + 1):
                try:
                    with self.engine.connect() as conn, conn.begin():
                        for work in batch:
                            work.error = None
                            try:
                                with conn.begin_nested():
                                    work.result = work.fn(conn)
                            except DBAPIError as err:
                                if self._is_transient(err):
                                    raise
                                work.error = err
                            except Exception as err:  # this writer's own failure: its savepoint is rolled back
                                work.error = err
                    break
                except DBAPIError as err:
                    if retry == self._max_retries or not self._is_transient(err):
                        raise
                    time.sleep(min(2.0, 0.02 * 2**retry) * random.uniform(0.5, 1.0))
        except BaseException as err:
            for work in batch:
                work.error = err
            if not isinstance(err, Exception):
                raise
        finally:
            for work in batch:
                work.done.set()
