"""The study service on SQLite and PostgreSQL: submission, idempotency, search scheduling within
budget and parallelism, Optuna told exactly once, cancel / resume / extend."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import optuna
import pytest
from sqlalchemy import event

from krpo_bench.service.db import JobStatus, utcnow
from krpo_bench.service.optuna_store import optuna_storage
from krpo_bench.service.studies import StudyError, StudyNotFound, StudyService
from krpo_bench.spec.loading import SpecError
from tests.trial_specs import tiny_trial

BASE = {k: v for k, v in tiny_trial(steps=5).items() if k != "name"}
ABLATION = {
    "name": "ablation",
    "kind": "ablation",
    "base": BASE,
    "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
    "seeds": 3,
}
SEARCH = {
    "name": "search",
    "kind": "search",
    "base": {**BASE, "estimator": {"name": "krpo"}},
    "space": {
        "estimator.Q": {"type": "log_uniform", "low": 1e-6, "high": 1e-3},
        "estimator.R": {"type": "log_uniform", "low": 1e-3, "high": 1e-1},
    },
    "sampler": "random",
    "n_trials": 5,
    "parallelism": 2,
}


@pytest.fixture
def service(db_url, tmp_path) -> Iterator[StudyService]:
    service = StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield service
    service.engine.dispose()  # no PostgreSQL connection left for the garbage collector


def finish_all(service: StudyService, accuracy: float = 0.5) -> int:
    """Claim and complete every queued job the way a worker would, without training."""
    done = 0
    while (job := service.queue.claim("test-worker", 60)) is not None:
        assert service.queue.complete(
            job.id, job.attempt, {"status": "succeeded", "final_accuracy": accuracy + 0.01 * done}
        )
        service.job_finished(job.id)
        done += 1
    return done


def test_ablation_submission_queues_every_trial_once(service):
    info = service.submit(ABLATION, idempotency_key="k1")
    assert info.total == 6 and info.counts["queued"] == 6 and info.status == "running"
    again = service.submit(ABLATION, idempotency_key="k1")
    assert again.id == info.id and len(service.jobs(info.id)) == 6
    jobs = service.jobs(info.id)
    assert {j.config["variant"] for j in jobs} == {"grpo", "krpo"}
    assert {j.config["tags"]["krpo.seed"] for j in jobs} == {"0", "1", "2"}
    assert info.mlflow_parent_run_id is None and "parent_run_id" not in jobs[0].config, (
        "MLflow records follow the submission"
    )
    records = service.ensure_mlflow(info.id)
    assert service.get(info.id).mlflow_parent_run_id == records.parent_run_id
    service.resume(info.id)
    assert len(service.jobs(info.id)) == 6, "resume re-plans idempotently"
    assert finish_all(service) == 6
    final = service.get(info.id)
    assert final.status == "succeeded" and final.done == 6
    results = service.results(info.id)
    assert [v.label for v in results.variants] == ["grpo", "krpo"] and all(v.n == 3 for v in results.variants)


def test_a_study_view_reads_in_one_transaction_what_the_separate_reads_would(service):
    info = service.submit(ABLATION)
    job = service.queue.claim("test-worker", 60)
    assert service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": 0.5})
    service.job_finished(job.id)
    service.registry.register("live-worker")
    service.registry.register("stopped-worker")
    service.registry.deregister("stopped-worker")
    begins = []
    begun = begins.append
    event.listen(service.engine, "begin", begun)
    try:
        view = service.view(info.id)
    finally:
        event.remove(service.engine, "begin", begun)
    assert len(begins) == 1, "the row, the jobs and the live workers are one read transaction"
    assert view.info == service.get(info.id) and view.info.counts["succeeded"] == 1
    assert view.analysis.model_dump_json() == service.results(info.id).model_dump_json() and view.workers == 1
    assert [j.id for j in view.jobs] == [j.id for j in service.jobs(info.id)]
    assert view.spec.model_dump(mode="json") == info.spec
    assert service.registry.live(utcnow() + timedelta(seconds=1)) == 0, "a heartbeat before `since` is not live"
    with pytest.raises(StudyNotFound):
        service.view("no-such-study")


def test_invalid_study_stores_nothing(service):
    bad = copy.deepcopy(ABLATION)
    bad["variants"]["krpo"]["estimator"]["R"] = 0
    with pytest.raises(SpecError):
        service.submit(bad)
    assert service.list() == []


def test_search_respects_parallelism_and_budget_and_tells_optuna_once(service):
    info = service.submit(SEARCH)
    assert info.counts["queued"] == 2, "no more than `parallelism` trials in flight"
    assert finish_all(service) == 5
    info = service.get(info.id)
    assert info.status == "succeeded" and info.done == 5
    study = optuna.load_study(study_name=info.optuna_study_name, storage=optuna_storage(service.db_url))
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    job = service.jobs(info.id)[0]
    service.job_finished(job.id)
    assert len(study.get_trials()) == 5, "a repeated finish neither re-tells nor asks more"
    extended = service.extend(info.id, 3)
    assert extended.total == 8 and extended.status == "running"
    assert finish_all(service) == 3
    assert len(study.get_trials()) == 8


def test_cancel_and_resume(service):
    info = service.submit(ABLATION)
    job = service.queue.claim("w", 60)
    cancelled = service.cancel(info.id)
    assert cancelled.status == "cancelled" and cancelled.counts["cancelled"] == 5
    assert service.queue.heartbeat(job.id, job.attempt, 60).value == "cancel"
    assert service.queue.mark_cancelled(job.id, job.attempt)
    resumed = service.resume(info.id)
    assert resumed.counts["queued"] == 6 and resumed.status == "running"
    with pytest.raises(StudyError):
        service.extend(info.id, 2)


def optuna_trials(service: StudyService, study_id: str) -> list[optuna.trial.FrozenTrial]:
    """The search's trials as Optuna's own API reads them back."""
    name = service.get(study_id).optuna_study_name
    return optuna.load_study(study_name=name, storage=optuna_storage(service.db_url)).get_trials()


def states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    return dict(Counter(t.state.name for t in trials))


def test_a_failed_trial_that_resume_reruns_reaches_optuna_with_its_value(service):
    info = service.submit(SEARCH)
    job = service.queue.claim("w", 60)
    assert service.queue.fail(job.id, job.attempt, "boom", retryable=False) is JobStatus.FAILED
    service.job_finished(job.id)
    failed = next(t for t in optuna_trials(service, info.id) if t.number == job.optuna_trial_number)
    assert failed.state == optuna.trial.TrialState.FAIL
    service.resume(info.id)
    assert finish_all(service) == 5, "the failed job runs again, with the 4 others"
    trials = optuna_trials(service, info.id)
    assert states(trials) == {"COMPLETE": 5, "FAIL": 1}
    rerun = [t for t in trials if t.params == failed.params and t.state == optuna.trial.TrialState.COMPLETE]
    assert len(rerun) == 1 and rerun[0].value is not None, "the rerun's value reaches the sampler"
    rerun_job = service.queue.get_job(job.id)
    assert rerun_job.optuna_trial_number == rerun[0].number and rerun_job.result["final_accuracy"] == rerun[0].value
    assert service.get(info.id).status == "succeeded"


def test_cancel_tells_optuna_of_queued_trials_and_resume_reruns_them_as_new_trials(service):
    info = service.submit(SEARCH)
    running = service.queue.claim("w", 60)
    assert service.cancel(info.id).status == "cancelled"
    assert states(optuna_trials(service, info.id)) == {"FAIL": 1, "RUNNING": 1}, "the queued trial is told at cancel"
    assert service.queue.mark_cancelled(running.id, running.attempt)
    service.job_finished(running.id)
    assert states(optuna_trials(service, info.id)) == {"FAIL": 2}
    service.resume(info.id)
    assert finish_all(service) == 5
    trials = optuna_trials(service, info.id)
    assert states(trials) == {"COMPLETE": 5, "FAIL": 2}
    complete = [tuple(sorted(t.params.items())) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(set(complete)) == 5
    assert service.get(info.id).status == "succeeded"


def test_resume_after_a_crash_and_a_cancel_reruns_the_dead_workers_trial(service):
    info = service.submit(SEARCH)
    dead = service.queue.claim("killed-worker", 600)  # SIGKILLed: its lease is far from expiring
    service.cancel(info.id)
    resumed = service.resume(info.id)
    assert resumed.status == "running" and resumed.counts["queued"] == 2 and resumed.counts["running"] == 0
    assert finish_all(service) == 5
    assert states(optuna_trials(service, info.id)) == {"COMPLETE": 5, "FAIL": 1}
    assert service.queue.get_job(dead.id).status is JobStatus.SUCCEEDED
    assert service.get(info.id).status == "succeeded"
    assert service.extend(info.id, 2).total == 7
    assert finish_all(service) == 2 and service.get(info.id).status == "succeeded"
    assert states(optuna_trials(service, info.id)) == {"COMPLETE": 7, "FAIL": 1}


def test_every_study_kind_has_one_handler_and_a_spec_names_its_kind() -> None:
    """Adding a kind is one handler class and one row of the table: every stored kind resolves."""
    from krpo_bench.service.db import StudyKind
    from krpo_bench.service.kinds import KINDS, handler
    from krpo_bench.spec.kind import kind_of

    assert set(KINDS) == set(StudyKind) and all(KINDS[kind].kind == kind for kind in StudyKind)
    assert {kind.value: handler(kind.value).scheduled for kind in StudyKind} == {
        "ablation": False,
        "search": True,
        "probe": False,
    }
    assert kind_of(ABLATION) == "ablation" and kind_of(SEARCH) == "search" and kind_of({"kind": "probe"}) == "probe"
