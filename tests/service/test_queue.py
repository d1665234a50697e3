"""The job protocol on SQLite and PostgreSQL: atomic claims, leases, fencing, retries, cancel."""

from __future__ import annotations

import multiprocessing as mp
import queue as stdlib_queue
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, Table, event, select, text, update
from sqlalchemy.exc import DBAPIError

from krpo_bench.service.db import AttemptOutcome, JobStatus, Study, make_engine, upgrade, utcnow
from krpo_bench.service.queue import UNESTIMATED_GPU_MEMORY_MIB, CancelResult, Heartbeat, JobQueue, NewJob
from tests.db import add_study, create_pg_database, drop_pg_database, terminate_connections

SHORT_LEASE_S = 0.2


def _expire_leases() -> None:
    time.sleep(SHORT_LEASE_S + 0.2)


def _drain(url: str, worker_id: str, start: Barrier, out: mp.Queue) -> None:
    """Worker process: claim -> complete until the queue is empty; report what it completed."""
    queue = JobQueue.from_url(url)
    start.wait(timeout=60)
    completed = []
    while (job := queue.claim(worker_id, lease_s=30)) is not None:
        if queue.complete(job.id, job.attempt, {"by": worker_id}):
            completed.append(job.id)
    out.put((worker_id, completed))
    queue.engine.dispose()


def test_eight_processes_complete_each_job_exactly_once(db_url: str, queue: JobQueue, study_id: str) -> None:
    ids = queue.enqueue_many(study_id, [NewJob(f"t{i}", {"i": i}) for i in range(200)])
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(db_url, f"w{i}", start, out)) for i in range(8)]
    for proc in procs:
        proc.start()
    try:
        reports = [out.get(timeout=90) for _ in procs]
    except stdlib_queue.Empty:
        pytest.fail("a worker process did not finish")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs)

    completions = Counter(job_id for _, done in reports for job_id in done)
    assert set(completions) == set(ids)
    assert max(completions.values()) == 1
    assert queue.counts(study_id)[JobStatus.SUCCEEDED] == 200
    owner_of = {job_id: worker for worker, done in reports for job_id in done}
    for job in queue.list_jobs(study_id):
        assert job.attempt == 1
        assert job.result == {"by": owner_of[job.id]} == {"by": job.owner}
    assert sum(1 for _, done in reports if done) >= 2, "the workers did not race"


def test_zombie_is_fenced_after_reclaim(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {})
    zombie = queue.claim("w1", SHORT_LEASE_S)
    assert zombie is not None and zombie.attempt == 1
    _expire_leases()
    assert len(queue.reclaim_expired()) == 1

    successor = queue.claim("w2", 30)
    assert successor is not None and (successor.id, successor.attempt) == (job_id, 2)
    assert queue.heartbeat(job_id, zombie.attempt, 30) is Heartbeat.LOST
    assert not queue.complete(job_id, zombie.attempt, {"by": "w1"})
    assert queue.fail(job_id, zombie.attempt, "zombie") is None
    assert not queue.release(job_id, zombie.attempt, "zombie")
    assert not queue.set_mlflow_run(job_id, zombie.attempt, "run-w1")
    assert queue.heartbeat(job_id, successor.attempt, 30) is Heartbeat.OK

    assert queue.complete(job_id, successor.attempt, {"by": "w2"})
    assert not queue.complete(job_id, zombie.attempt, {"by": "w1"})
    job = queue.get_job(job_id)
    assert job is not None
    assert (job.status, job.result, job.owner) == (JobStatus.SUCCEEDED, {"by": "w2"}, "w2")
    assert job.failures == 1
    assert queue.complete(job_id, successor.attempt, {"by": "again"})  # idempotent repeat...
    assert queue.get_job(job_id).result == {"by": "w2"}  # ...that keeps the first result


def test_expired_lease_goes_to_another_worker(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {"lr": 1e-4})
    lost = queue.claim("w1", SHORT_LEASE_S)
    assert lost is not None
    assert len(queue.reclaim_expired()) == 0  # lease still valid
    _expire_leases()
    assert len(queue.reclaim_expired()) == 1
    job = queue.get_job(job_id)
    assert job is not None
    assert (job.status, job.failures, job.owner) == (JobStatus.QUEUED, 1, None)
    assert job.last_error == "lease expired (worker w1)"

    retry = queue.claim("w2", 30)
    assert retry is not None and retry.id == job_id and retry.failures == 1
    assert queue.complete(job_id, retry.attempt, {"acc": 0.5})
    outcomes = [(a.worker, a.outcome) for a in queue.list_attempts(job_id)]
    assert outcomes == [("w1", AttemptOutcome.EXPIRED), ("w2", AttemptOutcome.SUCCEEDED)]


def test_max_attempts_then_failed_with_last_error(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {}, max_attempts=3)
    first = queue.claim("w1", 30)
    assert queue.fail(job_id, first.attempt, "CUDA OOM") is JobStatus.QUEUED
    second = queue.claim("w1", SHORT_LEASE_S)
    _expire_leases()
    assert len(queue.reclaim_expired()) == 1
    third = queue.claim("w1", 30)
    assert (first.attempt, second.attempt, third.attempt) == (1, 2, 3)
    assert queue.fail(job_id, third.attempt, "NaN loss") is JobStatus.FAILED
    job = queue.get_job(job_id)
    assert job is not None
    assert (job.status, job.failures, job.last_error) == (JobStatus.FAILED, 3, "NaN loss")
    assert job.finished_at is not None
    assert queue.claim("w1", 30) is None

    expired_id = queue.enqueue(study_id, "expires", {}, max_attempts=1)
    assert queue.claim("w1", SHORT_LEASE_S) is not None
    _expire_leases()
    assert len(queue.reclaim_expired()) == 1
    expired = queue.get_job(expired_id)
    assert expired is not None
    assert (expired.status, expired.last_error) == (JobStatus.FAILED, "lease expired (worker w1)")


def test_non_retryable_failure_fails_at_once(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {}, max_attempts=5)
    job = queue.claim("w1", 30)
    assert queue.fail(job_id, job.attempt, "bad config", retryable=False) is JobStatus.FAILED
    info = queue.get_job(job_id)
    assert (info.status, info.failures, info.last_error) == (JobStatus.FAILED, 1, "bad config")


def test_release_does_not_use_an_attempt(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {}, max_attempts=1)
    for expected_attempt in (1, 2, 3):
        job = queue.claim("w1", 30)
        assert job is not None and job.attempt == expected_attempt
        assert queue.release(job_id, job.attempt, "SIGTERM")
        info = queue.get_job(job_id)
        assert (info.status, info.failures, info.owner) == (JobStatus.QUEUED, 0, None)
    job = queue.claim("w2", 30)
    assert queue.complete(job_id, job.attempt, {"acc": 1.0})
    attempts = queue.list_attempts(job_id)
    outcomes = [a.outcome for a in attempts]
    assert outcomes == [AttemptOutcome.RELEASED] * 3 + [AttemptOutcome.SUCCEEDED]
    assert attempts[0].error == "SIGTERM" and attempts[0].ended_at is not None


def test_cancel_queued_and_running_jobs(queue: JobQueue, study_id: str) -> None:
    queued_id = queue.enqueue(study_id, "queued", {}, priority=-1)
    running_id = queue.enqueue(study_id, "running", {})
    running = queue.claim("w1", 30)
    assert running is not None and running.id == running_id

    assert queue.cancel_job(queued_id) is JobStatus.CANCELLED
    assert queue.claim("w2", 30) is None
    assert queue.cancel_job(running_id) is JobStatus.RUNNING
    assert queue.heartbeat(running_id, running.attempt, 30) is Heartbeat.CANCEL
    assert queue.mark_cancelled(running_id, running.attempt)
    assert queue.heartbeat(running_id, running.attempt, 30) is Heartbeat.LOST
    assert queue.get_job(running_id).status is JobStatus.CANCELLED
    assert queue.cancel_job("no-such-job") is None


def test_cancelled_job_is_not_requeued(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {})
    job = queue.claim("w1", 30)
    queue.cancel_job(job_id)
    assert queue.fail(job_id, job.attempt, "interrupted") is JobStatus.CANCELLED
    assert queue.get_job(job_id).last_error == "interrupted"


def test_cancel_study(engine: Engine, queue: JobQueue, study_id: str) -> None:
    other_study = add_study(engine, "other")
    queue.enqueue_many(study_id, [NewJob(f"t{i}", {}) for i in range(4)])
    queue.enqueue(other_study, "t0", {})
    running = [queue.claim("w1", 30) for _ in range(2)]
    assert queue.cancel_study(study_id) == CancelResult(cancelled=2, signalled=2)
    for job in running:
        assert queue.heartbeat(job.id, job.attempt, 30) is Heartbeat.CANCEL
        assert queue.release(job.id, job.attempt, "stopping")  # a cancelled job is not requeued
    assert queue.counts(study_id)[JobStatus.CANCELLED] == 4
    late = queue.get_job(queue.enqueue(study_id, "late", {}))
    assert late.status is JobStatus.CANCELLED
    assert queue.counts(other_study)[JobStatus.QUEUED] == 1


def _study_status(engine: Engine, study_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(Study.status).where(Study.id == study_id)).scalar_one()


def test_a_study_with_a_cancelled_job_ends_cancelled_not_succeeded(
    engine: Engine, queue: JobQueue, study_id: str
) -> None:
    ids = queue.enqueue_many(study_id, [NewJob("a", {}), NewJob("b", {})])
    job = queue.claim("w1", 30)
    assert queue.cancel_job(ids[1]) is JobStatus.CANCELLED
    assert _study_status(engine, study_id) == "running"
    assert queue.complete(job.id, job.attempt, {})
    assert _study_status(engine, study_id) == "cancelled"


def test_a_study_settles_once_it_holds_every_job_it_will(engine: Engine, queue: JobQueue, study_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(Study).where(Study.id == study_id).values(total_jobs=3))
    for key in ("a", "b", "a"):  # the repeated key is the same job: it is counted once
        queue.enqueue(study_id, key, {})
        while (job := queue.claim("w1", 30)) is not None:
            assert queue.complete(job.id, job.attempt, {})
    assert _study_status(engine, study_id) == "running", "2 of its 3 jobs exist"
    queue.enqueue(study_id, "c", {})
    job = queue.claim("w1", 30)
    assert queue.complete(job.id, job.attempt, {})
    assert _study_status(engine, study_id) == "succeeded"


def test_resume_requeues_a_running_job_whose_cancellation_was_pending(
    engine: Engine, queue: JobQueue, study_id: str
) -> None:
    queue.enqueue_many(study_id, [NewJob("a", {}), NewJob("b", {}), NewJob("c", {})])
    dead = queue.claim("w1", 60)  # its worker is SIGKILLed now: the lease has not expired yet
    done = queue.claim("w2", 60)
    assert queue.complete(done.id, done.attempt, {})
    assert queue.cancel_study(study_id) == CancelResult(cancelled=1, signalled=1)
    assert queue.requeue_study(study_id) == 2, "the later command wins: the cancelled and the dead worker's job"
    job = queue.get_job(dead.id)
    assert (job.status, job.cancel_requested, job.owner) == (JobStatus.QUEUED, False, None)
    assert queue.heartbeat(dead.id, dead.attempt, 60) is Heartbeat.LOST, "the old holder is fenced off"
    assert len(queue.reclaim_expired()) == 0
    while (job := queue.claim("w3", 60)) is not None:
        assert queue.complete(job.id, job.attempt, {})
    assert queue.counts(study_id)[JobStatus.SUCCEEDED] == 3
    assert _study_status(engine, study_id) == "succeeded"
    assert [a.outcome for a in queue.list_attempts(dead.id)] == [AttemptOutcome.RELEASED, AttemptOutcome.SUCCEEDED]


def test_reclaim_settles_a_study_whose_last_finisher_died_before_settling_it(
    engine: Engine, queue: JobQueue, study_id: str
) -> None:
    queue.enqueue(study_id, "a", {})
    job = queue.claim("w1", 30)
    with engine.begin() as conn:  # the job's end committed, and its process died there
        conn.execute(
            update(Table("jobs", MetaData(), autoload_with=conn)).values(status="succeeded", finished_at=utcnow())
        )
    assert _study_status(engine, study_id) == "running"
    assert queue.reclaim_expired() == []
    assert _study_status(engine, study_id) == "succeeded"
    assert queue.get_job(job.id).status is JobStatus.SUCCEEDED


def test_upgrade_counts_existing_jobs_and_corrects_wrong_successes(db_url: str) -> None:
    upgrade(db_url, "0004")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            studies = Table("studies", MetaData(), autoload_with=conn)  # as revision 0004 made it
            jobs = Table("jobs", MetaData(), autoload_with=conn)
            for sid, status, job_statuses in [
                ("ok", "succeeded", ["succeeded", "pruned"]),
                ("wrong", "succeeded", ["succeeded", "cancelled"]),
                ("busy", "running", ["succeeded", "queued", "running"]),
            ]:
                conn.execute(
                    studies.insert().values(
                        id=sid,
                        name=sid,
                        kind="ablation",
                        spec={},
                        status=status,
                        priority=0,
                        total_jobs=len(job_statuses),
                        cancel_requested=False,
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
                conn.execute(
                    jobs.insert(),
                    [
                        {
                            "id": f"{sid}-{i}",
                            "seq": hash((sid, i)) % 10**9,
                            "study_id": sid,
                            "trial_key": str(i),
                            "config": {},
                            "status": st,
                            "priority": 0,
                            "attempt": 0,
                            "failures": 0,
                            "max_attempts": 3,
                            "cancel_requested": False,
                            "gpus": 1,
                            "created_at": utcnow(),
                        }
                        for i, st in enumerate(job_statuses)
                    ],
                )
        upgrade(engine)
        with engine.connect() as conn:
            rows = dict(conn.execute(select(Study.id, Study.enqueued_jobs)).tuples().all())
        assert rows == {"ok": 2, "wrong": 2, "busy": 3}
        assert [_study_status(engine, s) for s in ("ok", "wrong", "busy")] == ["succeeded", "cancelled", "running"]
        queue = JobQueue(engine)
        job = queue.claim("w1", 30)
        assert job.study_id == "busy" and queue.complete(job.id, job.attempt, {})
        assert _study_status(engine, "busy") == "running"
        assert queue.complete("busy-2", 0, {})  # the job that was running during the upgrade
        assert _study_status(engine, "busy") == "succeeded", "the counted jobs settle the study"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_cancel_and_job_ends_never_deadlock() -> None:
    """Ends of a study's jobs racing its cancellation, with no retry to hide a deadlock."""
    url = create_pg_database()
    engine = make_engine(url, pool_size=12)
    try:
        upgrade(engine)
        queue = JobQueue(engine, max_retries=0)
        errors: list[BaseException] = []
        for _ in range(6):
            study_id = add_study(engine)
            queue.enqueue_many(study_id, [NewJob(f"t{i}", {}) for i in range(8)])
            held = [queue.claim("w", 30) for _ in range(8)]
            start = threading.Barrier(len(held) + 1)

            def run(fn, *args) -> None:
                start.wait()
                try:
                    fn(*args)
                except DBAPIError as err:
                    errors.append(err)

            threads = [threading.Thread(target=run, args=(queue.complete, j.id, j.attempt, {})) for j in held]
            threads.append(threading.Thread(target=run, args=(queue.cancel_study, study_id)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert queue.counts(study_id)[JobStatus.SUCCEEDED] == 8
    finally:
        engine.dispose()
        drop_pg_database(url)


def test_priority_then_fifo(queue: JobQueue, study_id: str) -> None:
    for key, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 0)]:
        queue.enqueue(study_id, key, {}, priority=priority)
    order = []
    while (job := queue.claim("w1", 30)) is not None:
        order.append(job.trial_key)
    assert order == ["b", "d", "a", "c", "f", "e"]


def test_gpu_fit(queue: JobQueue, study_id: str) -> None:
    queue.enqueue(study_id, "big", {}, gpus=4, priority=1)
    queue.enqueue(study_id, "small", {}, gpus=1)
    assert queue.claim("w1", 30, gpus_free=0) is None
    assert queue.claim("w1", 30, gpus_free=2).trial_key == "small"
    assert queue.claim("w1", 30, gpus_free=4).trial_key == "big"


def test_memory_fit_needs_room_on_as_many_gpus_as_the_job_uses(queue: JobQueue, study_id: str) -> None:
    queue.enqueue(study_id, "pair", {}, gpus=2, gpu_memory_mib=6000, priority=3)
    queue.enqueue(study_id, "large", {}, gpus=1, gpu_memory_mib=20_000, priority=2)
    queue.enqueue(study_id, "small", {}, gpus=1, gpu_memory_mib=3000, priority=1)
    # Room on two GPUs, but only one holds 6000 MiB: the pair waits, and so does the large job.
    assert queue.claim("w1", 30, gpus_free=2, room_mib=[4000, 7000]).trial_key == "small"
    assert queue.claim("w1", 30, gpus_free=2, room_mib=[1000, 7000]) is None
    assert queue.claim("w1", 30, gpus_free=1, room_mib=[30_000]).trial_key == "large"
    job = queue.claim("w1", 30, gpus_free=3, room_mib=[6000, 500, 9000])
    assert (job.trial_key, job.gpus, job.gpu_memory_mib) == ("pair", 2, 6000)


def test_a_job_without_an_estimate_counts_as_the_old_fixed_budget(queue: JobQueue, study_id: str) -> None:
    queue.enqueue(study_id, "legacy", {})
    assert queue.list_jobs(study_id)[0].gpu_memory_mib is None
    assert queue.claim("w1", 30, gpus_free=1, room_mib=[UNESTIMATED_GPU_MEMORY_MIB - 1]) is None
    assert queue.claim("w1", 30, gpus_free=1, room_mib=[UNESTIMATED_GPU_MEMORY_MIB]).trial_key == "legacy"


def test_idempotent_enqueue(queue: JobQueue, study_id: str) -> None:
    first = queue.enqueue(study_id, "seed=1", {"seed": 1}, priority=2, optuna_trial_number=7)
    assert queue.enqueue(study_id, "seed=1", {"seed": 99}, priority=9) == first
    batch = [NewJob("seed=2", {"seed": 2}), NewJob("seed=1", {}), NewJob("seed=2", {"seed": -2})]
    ids = queue.enqueue_many(study_id, batch)
    assert ids[1] == first and ids[0] == ids[2] != first
    assert queue.enqueue_many(study_id, batch) == ids
    jobs = queue.list_jobs(study_id)
    assert [(j.trial_key, j.config, j.priority) for j in jobs] == [
        ("seed=1", {"seed": 1}, 2),
        ("seed=2", {"seed": 2}, 0),
    ]
    assert jobs[0].optuna_trial_number == 7
    with pytest.raises(KeyError):
        queue.enqueue("no-such-study", "t", {})


def test_claim_details_and_mlflow_run(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {"q": 0.1}, timeout_s=600, gpus=2, max_attempts=4)
    job = queue.claim("w1", 30)
    assert (job.config, job.timeout_s, job.gpus, job.max_attempts) == ({"q": 0.1}, 600, 2, 4)
    assert job.lease_expires_at.tzinfo is not None
    assert queue.set_mlflow_run(job_id, job.attempt, "run-1")
    queue.release(job_id, job.attempt, "restart")
    assert queue.claim("w2", 30).mlflow_run_id == "run-1"  # a retry resumes the same run
    info = queue.get_job(job_id)
    assert (info.status, info.owner) == (JobStatus.RUNNING, "w2")
    assert info.started_at is not None and info.started_at.tzinfo is not None


def test_pruned(queue: JobQueue, study_id: str) -> None:
    job_id = queue.enqueue(study_id, "t", {})
    job = queue.claim("w1", 30)
    assert queue.mark_pruned(job_id, job.attempt, {"step": 40, "value": 0.1})
    info = queue.get_job(job_id)
    assert (info.status, info.result) == (JobStatus.PRUNED, {"step": 40, "value": 0.1})
    counts = queue.counts(study_id)
    assert counts[JobStatus.PRUNED] == 1 and sum(counts.values()) == 1
    assert [j.id for j in queue.list_jobs(study_id, statuses=[JobStatus.PRUNED])] == [job_id]
    assert queue.list_jobs(study_id, statuses=[JobStatus.QUEUED]) == []


@pytest.mark.postgres
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "retry"])
def test_reconnects_after_the_server_drops_connections(pre_ping: bool) -> None:
    url = create_pg_database()
    engine = make_engine(url, pool_pre_ping=pre_ping)
    try:
        upgrade(engine)
        queue = JobQueue(engine)
        job_id = queue.enqueue(add_study(engine), "t", {})
        assert terminate_connections(url) >= 1
        job = queue.claim("w1", 30)
        assert job is not None and job.id == job_id
        terminate_connections(url)
        assert queue.complete(job_id, job.attempt, {"ok": True})
    finally:
        engine.dispose()
        drop_pg_database(url)


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = make_engine(url)
    upgrade(engine)
    queue = JobQueue(engine, max_retries=0)
    study_id = add_study(engine)
    job_id = queue.enqueue(study_id, "t", {})
    writer = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        assert queue.get_job(job_id) is not None
        assert queue.counts(study_id)[JobStatus.QUEUED] == 1
        assert time.monotonic() - began < 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        engine.dispose()


def _plans(engine: Engine, sent: list[tuple[str, Any]]) -> list[str]:
    """Each captured statement's plan (PostgreSQL: executed with its buffers, then rolled back)."""
    pg = engine.dialect.name == "postgresql"
    plans = []
    for statement, parameters in sent:
        with engine.connect() as conn, conn.begin() as txn:
            explain = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if pg else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            txn.rollback()
        plans.append("\n".join(str(row[0] if pg else row[-1]) for row in rows))
    return plans


def test_a_job_end_probes_indexes_however_many_jobs_of_the_study_ended(db_url: str) -> None:
    """No statement of a job's end (the finish, the settle probe) scans the study's jobs, also once
    many of them ended and before any vacuum: the settle probe touches a few index pages (it does
    not walk the dead index entries of the jobs claimed first)."""
    engine = make_engine(db_url)
    upgrade(engine)
    queue = JobQueue(engine)
    study_id = str(uuid.uuid4())
    n_jobs = 2000
    queue.create_study(
        {"id": study_id, "name": "big", "kind": "ablation", "spec": {}, "mlflow_pending": False, "total_jobs": n_jobs},
        [NewJob(f"t{k}", {"k": k}) for k in range(n_jobs)],
    )
    pg = engine.dialect.name == "postgresql"
    if pg:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    for _ in range(400):
        job = queue.claim("w", 60)
        assert job is not None and queue.complete(job.id, job.attempt, {"ok": True})
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("WITH", "UPDATE", "SELECT")):
            sent.append((statement, parameters))

    job = queue.claim("w", 60)
    assert job is not None
    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert queue.complete(job.id, job.attempt, {"ok": True})
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    job = queue.claim("w2", 60)  # the captured end, explained on a job this attempt holds
    assert job is not None
    end_sent = [(s, {**p, "p_id": job.id, "p_attempt": job.attempt} if "p_id" in p else p) for s, p in sent]
    assert len(end_sent) >= 2  # the finish and the settle probe
    for plan in _plans(engine, end_sent):
        if pg:
            assert "Seq Scan on jobs" not in plan, plan
            assert "Bitmap Heap Scan on jobs" not in plan, plan
            if plan.lstrip().startswith(("Seq Scan on studies", "Index Scan using pk_studies")):  # the settle probe
                touched = [int(n) for n in re.findall(r"Buffers: shared hit=(\d+)", plan)]
                assert max(touched, default=0) < 20, plan
        else:
            assert not re.search(r"^SCAN (jobs|job_attempts)\b", plan, re.M), plan
    engine.dispose()
