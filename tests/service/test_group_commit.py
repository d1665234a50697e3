"""Group commit on SQLite: writers waiting together share one COMMIT, each keeps its own outcome."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, insert, select
from sqlalchemy.exc import IntegrityError

from krpo_bench.service.db import Job, Study, make_engine, read_connection, upgrade
from krpo_bench.service.group_commit import GroupCommit
from krpo_bench.service.queue import JobQueue, NewJob
from krpo_bench.service.studies import StudyService
from krpo_bench.service.transactions import is_transient
from tests.db import add_study


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


def _commits(engine: Engine) -> list[int]:
    seen: list[int] = []
    event.listen(engine, "commit", lambda _conn: seen.append(1))
    return seen


def _run_together(group: GroupCommit, lock: threading.Lock, fns: list) -> list[object]:
    """Start one writer per fn while ``lock`` is held, let them all queue up, then release it."""
    outcomes: list[object] = [None] * len(fns)
    started = [threading.Event() for _ in fns]

    def writer(i: int) -> None:
        started[i].set()
        try:
            outcomes[i] = group.run(fns[i])
        except Exception as err:  # the test inspects each writer's own outcome
            outcomes[i] = err

    with lock:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(fns))]
        for t in threads:
            t.start()
        for s in started:
            assert s.wait(10)
        time.sleep(0.3)  # each writer is now queued behind the lock
    for t in threads:
        t.join(30)
    return outcomes


def test_waiting_writers_share_one_commit_and_each_gets_its_result(engine: Engine) -> None:
    lock = threading.Lock()
    group = GroupCommit(engine, lock, is_transient, max_retries=2)
    commits = _commits(engine)

    def add(name: str):
        def fn(conn):
            conn.execute(insert(Study).values(id=f"id-{name}", name=name, kind="ablation", spec={}))
            return name

        return fn

    outcomes = _run_together(group, lock, [add(f"s{i}") for i in range(8)])
    assert outcomes == [f"s{i}" for i in range(8)]
    assert len(commits) == 1
    with read_connection(engine) as conn:
        assert conn.execute(select(func.count()).select_from(Study)).scalar_one() == 8


def test_a_failing_writer_rolls_back_alone(engine: Engine) -> None:
    lock = threading.Lock()
    group = GroupCommit(engine, lock, is_transient, max_retries=2)
    existing = add_study(engine, "taken")

    def ok(conn):
        conn.execute(insert(Study).values(id="fresh", name="fresh", kind="ablation", spec={}))
        return "stored"

    def clashes(conn):
        conn.execute(insert(Study).values(id="half", name="half", kind="ablation", spec={}))
        conn.execute(insert(Study).values(id=existing, name="dup", kind="ablation", spec={}))

    def raises(conn):
        conn.execute(insert(Study).values(id="never", name="never", kind="ablation", spec={}))
        raise ValueError("this writer's own error")

    outcomes = _run_together(group, lock, [ok, clashes, raises])
    assert outcomes[0] == "stored"
    assert isinstance(outcomes[1], IntegrityError)
    assert isinstance(outcomes[2], ValueError) and "own error" in str(outcomes[2])
    with read_connection(engine) as conn:
        ids = set(conn.execute(select(Study.id)).scalars())
    assert ids == {existing, "fresh"}  # the failing writers' first inserts were rolled back with them


def test_concurrent_submissions_store_every_study_and_job(tmp_path: Path) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = {
        "name": "many",
        "kind": "ablation",
        "seeds": 2,
        "base": {"task": {"kind": "arithmetic"}, "training": {"max_steps": 1}},
        "variants": {"grpo": {"estimator": {"name": "grpo"}}, "rloo": {"estimator": {"name": "rloo"}}},
    }
    infos = []

    def submit() -> None:
        infos.append(service.submit(spec))

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(infos) == 12 and all(i.counts["queued"] == 4 and i.total == 4 for i in infos)
    for info in infos:
        stored = service.get(info.id)
        assert stored.counts == info.counts and stored.spec == info.spec and stored.created_at == info.created_at
    with read_connection(service.engine) as conn:
        seqs = list(conn.execute(select(Job.seq)).scalars())
    assert len(seqs) == 48 == len(set(seqs))  # every job stored once, with its own queue position
    service.engine.dispose()


def test_queue_new_study_returns_ids_in_input_order(engine: Engine) -> None:
    queue = JobQueue(engine)
    jobs = [NewJob("b", {}), NewJob("a", {}), NewJob("b", {"again": True})]
    ids = queue.create_study({"id": "s", "name": "s", "kind": "ablation", "spec": {}}, jobs)
    assert ids[0] == ids[2] != ids[1]
    stored = {j.trial_key: j.id for j in queue.list_jobs("s")}
    assert stored == {"b": ids[0], "a": ids[1]}


def test_study_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """The service's reads begin deferred: a writer holding SQLite's write lock (another process)
    does not hold up a status page, a listing or a name lookup."""
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    info = service.submit({"name": "held", "kind": "ablation", "base": {"task": {"kind": "arithmetic"}}})
    writer = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        assert service.get(info.id).counts["queued"] == 1
        assert service.resolve("held") == info.id
        assert [i.id for i in service.list()] == [info.id]
        assert [v.label for v in service.results(info.id).variants] == ["base"]
        assert service.pending_mlflow() == [info.id]
        assert time.monotonic() - began < 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        service.engine.dispose()
