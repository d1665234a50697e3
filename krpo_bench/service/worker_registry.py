"""The worker registry: which worker processes are up, on which host and devices, running what.

Every statement on the ``workers`` table lives here (the layer contract checks it). Each method is
one short transaction through :class:`Transactions` (retried on transient errors; timestamps from
the database server's clock on PostgreSQL), except those taking a ``Connection``: they run inside
the caller's transaction (a study's detail reads its live workers with its jobs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.engine import Connection

from krpo_bench.service.db import Worker, WorkerStatus
from krpo_bench.service.transactions import Transactions

workers = cast(Table, Worker.__table__)
_LIVE = (
    select(func.count())
    .select_from(workers)
    .where(workers.c.status == WorkerStatus.ACTIVE.value, workers.c.heartbeat_at >= bindparam("p_since"))
)


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker."""

    id: str
    hostname: str
    pid: int
    gpus: list[int]
    slots: int
    started_at: datetime
    heartbeat_at: datetime
    status: WorkerStatus
    current_jobs: list[str]


class WorkerRegistry:
    """The registered workers of one job database."""

    def __init__(self, transactions: Transactions) -> None:
        self.tx = transactions

    def register(
        self,
        worker_id: str,
        *,
        hostname: str | None = None,
        pid: int | None = None,
        gpus: Sequence[int] = (),
        slots: int = 1,
    ) -> None:
        """Record a worker as active (re-registering the same id starts it afresh)."""
        values = {
            "hostname": hostname or socket.gethostname(),
            "pid": os.getpid() if pid is None else pid,
            "gpus": list(gpus),
            "slots": slots,
            "status": WorkerStatus.ACTIVE.value,
            "current_jobs": [],
        }

        def txn(conn: Connection) -> None:
            stamps = {"started_at": self.tx.now, "heartbeat_at": self.tx.now}
            stmt = self.tx.insert(workers).values(id=worker_id, **values, **stamps)
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={**values, **stamps}), self.tx.clock())

        self.tx.run(txn)

    def heartbeat(self, worker_id: str, current_jobs: Sequence[str]) -> bool:
        """Note that a worker is alive and which jobs it runs; False if it is not registered."""

        def txn(conn: Connection) -> bool:
            return bool(
                conn.execute(
                    update(workers)
                    .where(workers.c.id == worker_id)
                    .values(
                        heartbeat_at=self.tx.now, current_jobs=list(current_jobs), status=WorkerStatus.ACTIVE.value
                    ),
                    self.tx.clock(),
                ).rowcount
            )

        return self.tx.run(txn)

    def deregister(self, worker_id: str) -> None:
        """Mark a worker stopped (clean shutdown)."""

        def txn(conn: Connection) -> None:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(status=WorkerStatus.STOPPED.value, current_jobs=[], heartbeat_at=self.tx.now),
                self.tx.clock(),
            )

        self.tx.run(txn)

    def list(self) -> list[WorkerInfo]:
        """All registered workers, by id."""
        columns = [workers.c[f.name] for f in fields(WorkerInfo)]

        def txn(conn: Connection) -> list[WorkerInfo]:
            rows = conn.execute(select(*columns).order_by(workers.c.id))
            return [WorkerInfo(**{**r._mapping, "status": WorkerStatus(r.status)}) for r in rows]

        return self.tx.run(txn, read_only=True)

    def count_live(self, conn: Connection, since: datetime) -> int:
        """How many workers are active with a heartbeat at or after ``since``, in the caller's transaction."""
        return conn.execute(_LIVE, {"p_since": since}).scalar_one()

    def live(self, since: datetime) -> int:
        """How many workers are active with a heartbeat at or after ``since``."""
        return self.tx.run(lambda conn: self.count_live(conn, since), read_only=True)
