"""Job-queue throughput: N no-op jobs drained by concurrent worker processes (claim -> complete).

Runs on a throw-away PostgreSQL database and on a temporary SQLite file and reports jobs/s and
duplicate completions (a job completed more than once; must be 0). The last line printed is the
PostgreSQL throughput:  ``python -m benchmarks.queue [--jobs N] [--workers W]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, insert

from krpo_bench.service.db import JobStatus, Study, StudyKind, make_engine, normalize_url, upgrade
from krpo_bench.service.queue import JobQueue, NewJob

LEASE_S = 60.0


@dataclass(frozen=True)
class Result:
    backend: str
    jobs: int
    workers: int
    seconds: float
    duplicates: int
    missing: int

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def _drain(url: str, worker_id: str, start: mp.synchronize.Barrier, out: mp.Queue) -> None:
    """Worker process: claim -> complete until the queue is empty; report what it completed."""
    queue = JobQueue.from_url(url)
    queue.counts("warm-up")  # opens the connection before the clock starts
    start.wait()
    completed = []
    while (job := queue.claim(worker_id, LEASE_S)) is not None:
        if queue.complete(job.id, job.attempt, {"ok": True}):
            completed.append(job.id)
    out.put(completed)
    queue.engine.dispose()


def run(backend: str, url: str, n_jobs: int, n_workers: int) -> Result:
    """Enqueue ``n_jobs`` no-op jobs at ``url`` and time ``n_workers`` processes draining them."""
    engine = make_engine(url)
    upgrade(engine)
    study_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(Study).values(id=study_id, name="bench", kind=StudyKind.ABLATION, spec={})
        )
    queue = JobQueue(engine)
    queue.enqueue_many(study_id, [NewJob(f"t{i}", {"i": i}) for i in range(n_jobs)])

    ctx = mp.get_context("spawn")
    start = ctx.Barrier(n_workers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(url, f"w{i}", start, out)) for i in range(n_workers)]
    for proc in procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    completions = Counter(job_id for _ in procs for job_id in out.get())
    seconds = time.perf_counter() - began
    for proc in procs:
        proc.join()

    succeeded = queue.counts(study_id)[JobStatus.SUCCEEDED]
    engine.dispose()
    return Result(
        backend=backend,
        jobs=n_jobs,
        workers=n_workers,
        seconds=seconds,
        duplicates=sum(n - 1 for n in completions.values() if n > 1),
        missing=n_jobs - min(len(completions), succeeded),
    )


def _report(result: Result) -> None:
    print(
        f"{result.backend:>10}: {result.jobs} jobs, {result.workers} workers, "
        f"{result.seconds:.2f} s, {result.jobs_per_s:.1f} jobs/s, "
        f"duplicates {result.duplicates}, missing {result.missing}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per backend")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server on which a throw-away database is created and dropped",
    )
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()

    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = run("sqlite", f"sqlite:///{Path(tmp) / 'queue.db'}", args.jobs, args.workers)
        _report(sqlite)
        print(f"sqlite_jobs_per_s {sqlite.jobs_per_s:.1f}")

    admin_url = normalize_url(args.pg_admin_url)
    name = f"krpo_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        pg = run("postgresql", admin_url.set(database=name).render_as_string(hide_password=False),
                 args.jobs, args.workers)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    _report(pg)
    print(f"postgresql_jobs_per_s {pg.jobs_per_s:.1f}")


if __name__ == "__main__":
    main()
