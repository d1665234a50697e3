"""The study service on SQLite and PostgreSQL: submission, idempotency, search scheduling within
budget and parallelism, Optuna told exactly once, cancel / resume / extend."""

from __future__ import annotations

import copy

import optuna
import pytest

from krpo_bench.service.optuna_store import optuna_storage
from krpo_bench.service.studies import StudyError, StudyService
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
def service(db_url, tmp_path) -> StudyService:
    return StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")


def finish_all(service: StudyService, accuracy: float = 0.5) -> int:
    """Claim and complete every queued job the way a worker would, without training."""
    done = 0
    while (job := service.queue.claim("test-worker", 60)) is not None:
        assert service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": accuracy + 0.01 * done})
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
    assert info.mlflow_parent_run_id is None and "parent_run_id" not in jobs[0].config, "MLflow records follow the submission"
    records = service.ensure_mlflow(info.id)
    assert service.get(info.id).mlflow_parent_run_id == records.parent_run_id
    service.resume(info.id)
    assert len(service.jobs(info.id)) == 6, "resume re-plans idempotently"
    assert finish_all(service) == 6
    final = service.get(info.id)
    assert final.status == "succeeded" and final.done == 6
    results = service.results(info.id)
    assert set(results) == {"grpo", "krpo"} and all(r["n"] == 3 for r in results.values())


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
