"""Job-queue throughput: no-op jobs of one study drained by concurrent worker processes.

For each size N given, N jobs are enqueued in one study and W processes claim -> complete them.

Each size runs on a throw-away PostgreSQL database and on a temporary SQLite file and reports
jobs/s and duplicate completions (a job completed more than once; must be 0). Ending a job costs the
same whatever the study's size, so the figures should stay flat as N grows. The last line printed
leads with the headline, the lowest PostgreSQL throughput over the sizes, then each size's figures
and the spread (highest / lowest - 1) per backend:
``python -m benchmarks.queue [--jobs N [N ...]] [--workers W]``, e.g. ``--jobs 3000 10000 100000``.
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
from sqlalchemy.engine import URL

from krpo_bench.service.db import JobStatus, Study, StudyKind, make_engine, normalize_url, upgrade
from krpo_bench.service.queue import JobQueue, NewJob

LEASE_S = 60.0
ENQUEUE_BATCH = 5000


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
        conn.execute(insert(Study).values(id=study_id, name="bench", kind=StudyKind.ABLATION, spec={}))
    queue = JobQueue(engine)
    for start in range(0, n_jobs, ENQUEUE_BATCH):
        queue.enqueue_many(
            study_id, [NewJob(f"t{i}", {"i": i}) for i in range(start, min(n_jobs, start + ENQUEUE_BATCH))]
        )

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


def run_postgres(admin_url: URL, n_jobs: int, n_workers: int) -> Result:
    """``run`` on a throw-away database of the server at ``admin_url``, dropped afterwards."""
    name = f"krpo_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        return run("postgresql", admin_url.set(database=name).render_as_string(hide_password=False), n_jobs, n_workers)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def summary(results: list[Result]) -> str:
    """The last line: the headline (lowest PostgreSQL jobs/s, else lowest SQLite), then per backend
    each size's jobs/s and the spread over the sizes."""
    by_backend: dict[str, list[Result]] = {}
    for result in results:
        by_backend.setdefault(result.backend, []).append(result)
    headline = "postgresql" if "postgresql" in by_backend else "sqlite"
    parts = [f"{headline}_jobs_per_s {min(r.jobs_per_s for r in by_backend[headline]):.1f}"]
    for backend, rows in by_backend.items():
        rates = [r.jobs_per_s for r in rows]
        sizes = ", ".join(f"{r.jobs}: {r.jobs_per_s:.1f}" for r in rows)
        parts.append(f"{backend} {sizes} (spread {max(rates) / min(rates) - 1:.0%})")
    parts.append(f"duplicates {sum(r.duplicates for r in results)}, missing {sum(r.missing for r in results)}")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, nargs="+", default=[3000], help="jobs in the study (one run per size and backend)"
    )
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server on which a throw-away database is created and dropped",
    )
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    if any(n < 1 for n in args.jobs) or args.workers < 1:
        parser.error("--jobs and --workers must be >= 1")

    results = []
    for n_jobs in args.jobs:
        if not args.skip_sqlite:
            with tempfile.TemporaryDirectory() as tmp:
                results.append(run("sqlite", f"sqlite:///{Path(tmp) / 'queue.db'}", n_jobs, args.workers))
            _report(results[-1])
        results.append(run_postgres(normalize_url(args.pg_admin_url), n_jobs, args.workers))
        _report(results[-1])
    print(summary(results), flush=True)
    if any(r.duplicates or r.missing for r in results):
        raise SystemExit("duplicate or missing completions")


if __name__ == "__main__":
    main()
