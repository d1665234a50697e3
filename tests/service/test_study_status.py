"""A study's status is stored when it changes (the queue settles it in the transaction that ends its
last job) and listing by status is one filtered query; the queue requeues a study's jobs; the search
scheduler builds its Optuna study once per service and uses Optuna's public API only."""

from __future__ import annotations

import ast
import inspect
import threading
from collections.abc import Iterator

import optuna
import pytest
from sqlalchemy import MetaData, Table, event, select

from krpo_bench.service import studies as studies_module
from krpo_bench.service.db import Study, make_engine, upgrade, utcnow
from krpo_bench.service.optuna_store import optuna_storage
from krpo_bench.service.studies import StudyService
from krpo_bench.spec.study import validate_study
from tests.trial_specs import tiny_ablation

SPEC = tiny_ablation("status", seeds=4)
SEARCH = {
    "name": "search",
    "kind": "search",
    "base": {**SPEC["base"], "estimator": {"name": "grpo"}},
    "space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-6, "high": 1e-3}},
    "sampler": "random",
    "n_trials": 4,
    "parallelism": 2,
}


@pytest.fixture
def service(db_url: str, tmp_path) -> Iterator[StudyService]:
    service = StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield service
    service.engine.dispose()  # no PostgreSQL connection left for the garbage collector


def stored_status(service: StudyService, study_id: str) -> str:
    """The status column itself (what listing filters on), not the service's view of it."""
    with service.engine.connect() as conn:
        return conn.execute(select(Study.status).where(Study.id == study_id)).scalar_one()


def test_the_last_job_to_end_stores_the_outcome(service: StudyService) -> None:
    ok = service.submit(SPEC).id
    bad = service.submit(SPEC).id
    jobs = [service.queue.claim("w", 60) for _ in range(8)]
    for job in jobs:
        if job.study_id == bad and job.trial_key == jobs[-1].trial_key:
            assert service.queue.fail(job.id, job.attempt, "boom", retryable=False) == "failed"
        else:
            assert stored_status(service, job.study_id) == "running"
            assert service.queue.complete(job.id, job.attempt, {"final_accuracy": 0.5})
    assert (stored_status(service, ok), stored_status(service, bad)) == ("succeeded", "failed")
    assert [s.id for s in service.list(status="failed")] == [bad]


def test_jobs_ending_at_once_settle_the_study(service: StudyService) -> None:
    study_id = service.submit(SPEC).id
    jobs = [service.queue.claim("w", 60) for _ in range(4)]
    barrier = threading.Barrier(len(jobs))

    def finish(job) -> None:
        barrier.wait()
        service.queue.complete(job.id, job.attempt, {"final_accuracy": 0.5})

    threads = [threading.Thread(target=finish, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stored_status(service, study_id) == "succeeded"


def test_cancel_and_resume_store_the_status_and_requeue_cleanly(service: StudyService) -> None:
    study_id = service.submit(SPEC).id
    running = service.queue.claim("w", 60)
    failed = service.queue.claim("w", 60)
    service.queue.fail(failed.id, failed.attempt, "boom", retryable=False)
    assert service.cancel(study_id).status == stored_status(service, study_id) == "cancelled"
    assert service.queue.complete(running.id, running.attempt, {"final_accuracy": 0.5})
    assert stored_status(service, study_id) == "cancelled", "a job ending after the cancel does not reopen it"
    resumed = service.resume(study_id)
    assert resumed.status == stored_status(service, study_id) == "running"
    requeued = [j for j in service.jobs(study_id) if j.status == "queued"]
    assert len(requeued) == 3 and all(j.finished_at is None and j.owner is None and j.failures == 0 for j in requeued)


def test_listing_by_status_is_one_filtered_page(service: StudyService) -> None:
    ids = [service.submit(SPEC).id for _ in range(5)]
    for study_id in ids[:3]:
        service.cancel(study_id)
    statements: list[str] = []
    event.listen(service.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    page = service.list(status="cancelled", limit=2, offset=1)
    assert [s.id for s in page] == [ids[1], ids[0]]
    studies_query = next(s for s in statements if "FROM studies" in s)
    assert "WHERE studies.status" in studies_query and "LIMIT" in studies_query
    assert [s.id for s in service.list(status="running")] == ids[:2:-1]


def test_migration_stores_the_status_reads_used_to_derive(db_url: str) -> None:
    upgrade(db_url, "0002")
    engine = make_engine(db_url)
    stored = validate_study(tiny_ablation("old", seeds=2)).model_dump(mode="json")
    outcomes = {
        "done": ["succeeded", "succeeded"],
        "broken": ["succeeded", "failed"],
        "busy": ["succeeded", "running"],
        "short": ["succeeded"],
    }
    try:
        with engine.begin() as conn:
            studies = Table("studies", MetaData(), autoload_with=conn)  # as revision 0002 left it
            jobs = Table("jobs", MetaData(), autoload_with=conn)
            for n, (name, statuses) in enumerate(outcomes.items()):
                conn.execute(
                    studies.insert().values(
                        id=name,
                        name=name,
                        kind="ablation",
                        spec=stored,
                        status="running",
                        priority=0,
                        cancel_requested=False,
                        mlflow_experiment_id="1",
                        mlflow_parent_run_id=None if name == "short" else "run",
                        created_at=utcnow(),
                        updated_at=utcnow(),
                    )
                )
                for k, status in enumerate(statuses):
                    conn.execute(
                        jobs.insert().values(
                            id=f"{name}-{k}",
                            seq=10 * n + k,
                            study_id=name,
                            trial_key=f"t{k}",
                            config={},
                            status=status,
                            priority=0,
                            attempt=1,
                            failures=0,
                            max_attempts=3,
                            cancel_requested=False,
                            gpus=1,
                            created_at=utcnow(),
                        )
                    )
        upgrade(engine)
        with engine.connect() as conn:
            rows = {
                r.id: r for r in conn.execute(select(Study.id, Study.status, Study.total_jobs, Study.mlflow_pending))
            }
        assert {k: rows[k].status for k in outcomes} == {
            "done": "succeeded",
            "broken": "failed",
            "busy": "running",
            "short": "running",
        }
        assert {rows[k].total_jobs for k in outcomes} == {2}
        assert [k for k in outcomes if rows[k].mlflow_pending] == ["short"]
    finally:
        engine.dispose()


def test_the_scheduler_builds_its_optuna_study_once(service: StudyService, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    create = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda **kw: built.append(kw["study_name"]) or create(**kw))
    info = service.submit(SEARCH)
    done = 0
    while (job := service.queue.claim("w", 60)) is not None:
        assert service.report_intermediate(job, 1, 0.1) is False
        assert service.queue.complete(job.id, job.attempt, {"final_accuracy": 0.5})
        service.job_finished(job.id)
        done += 1
    assert done == 4 and stored_status(service, info.id) == "succeeded"
    assert built == [info.optuna_study_name]
    trials = optuna.load_study(study_name=info.optuna_study_name, storage=optuna_storage(service.db_url)).get_trials()
    assert [t.intermediate_values for t in trials] == [{1: 0.1}] * 4


def test_the_service_uses_no_private_optuna_attribute() -> None:
    tree = ast.parse(inspect.getsource(studies_module))
    private = [
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
        and not (isinstance(n.value, ast.Name) and n.value.id == "self")
    ]
    assert private == []


def test_the_parent_run_ends_with_the_study_and_reopens_on_resume(service: StudyService) -> None:
    study_id = service.submit(SPEC).id
    parent = service.ensure_mlflow(study_id).parent_run_id
    client = optuna_free_client(service)
    service.cancel(study_id)
    assert client.get_run(parent).info.status == "KILLED"
    service.resume(study_id)
    assert client.get_run(parent).info.status == "RUNNING"
    jobs = [service.queue.claim("w", 60) for _ in range(4)]
    for job in jobs[:-1]:
        service.queue.complete(job.id, job.attempt, {"final_accuracy": 0.5})
        service.job_finished(job.id)
        assert client.get_run(parent).info.status == "RUNNING"
    service.queue.complete(jobs[-1].id, jobs[-1].attempt, {"final_accuracy": 0.5})
    service.job_finished(jobs[-1].id)
    assert client.get_run(parent).info.status == "FINISHED"
    assert service.resume(study_id).status == "succeeded", "nothing to redo: the study stays finished"
    assert client.get_run(parent).info.status == "FINISHED"


def optuna_free_client(service: StudyService):
    """An MLflow client on the service's tracking store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(service.mlflow_uri)
