"""Every search sampler and pruner through the study service, without training: trials are claimed,
reported and finished the way a worker does. Each sampler must give every trial its own parameters
and stop at exactly ``n_trials``; each pruner must prune what it is configured to prune, and only that."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from krpo_bench.service.optuna_store import optuna_storage
from krpo_bench.service.studies import StudyInfo, StudyService
from tests.trial_specs import tiny_trial

BASE = {**{k: v for k, v in tiny_trial(steps=5).items() if k != "name"}, "estimator": {"name": "krpo"}}
CONTINUOUS = {
    "estimator.Q": {"type": "log_uniform", "low": 1e-6, "high": 1e-3},
    "estimator.R": {"type": "uniform", "low": 1e-3, "high": 1e-1},
    "training.group_size": {"type": "int", "low": 2, "high": 16},
}
GRID = {
    "estimator.Q": {"type": "choice", "choices": [1e-6, 1e-5, 1e-4]},
    "training.group_size": {"type": "int", "low": 4, "high": 10, "step": 2},
}
GRID_POINTS = {(q, g) for q, g in itertools.product([1e-6, 1e-5, 1e-4], [4, 6, 8, 10])}


@pytest.fixture
def service(tmp_path: Path) -> StudyService:
    return StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")


def search(sampler: str, n_trials: int, parallelism: int, **extra) -> dict:
    return {
        "name": f"search-{sampler}",
        "kind": "search",
        "base": BASE,
        "space": GRID if sampler == "grid" else CONTINUOUS,
        "sampler": sampler,
        "n_trials": n_trials,
        "parallelism": parallelism,
        **extra,
    }


def run_like_a_worker(service: StudyService, curve: Callable[[int], list[float]]) -> int:
    """Claim queued jobs one by one; report ``curve(trial_number)`` as eval values at steps 1, 2, ...
    and stop at the first step the pruner prunes (marking the job pruned) or finish with the last
    value as the final accuracy. Returns how many jobs ran."""
    ran = 0
    while (job := service.queue.claim("test-worker", 60)) is not None:
        values = curve(job.optuna_trial_number)
        pruned = next((step for step, v in enumerate(values, 1) if service.report_intermediate(job, step, v)), None)
        if pruned is None:
            assert service.queue.complete(job.id, job.attempt, {"status": "succeeded", "final_accuracy": values[-1]})
        else:
            assert service.queue.mark_pruned(job.id, job.attempt, {"status": "pruned", "pruned_at": pruned})
        service.job_finished(job.id)
        ran += 1
    return ran


def optuna_trials(service: StudyService, info: StudyInfo) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=info.optuna_study_name, storage=optuna_storage(service.db_url))
    return sorted(study.get_trials(), key=lambda t: t.number)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "qmc"])
def test_every_sampler_gives_each_trial_its_own_parameters_and_stops_at_n_trials(service: StudyService, sampler: str):
    n_trials = 12
    info = service.submit(search(sampler, n_trials, parallelism=3))
    assert run_like_a_worker(service, lambda number: [0.3 + 0.01 * number]) == n_trials
    info = service.get(info.id)
    assert info.status == "succeeded" and info.total == n_trials
    jobs = service.jobs(info.id)
    trials = optuna_trials(service, info)
    assert len(jobs) == n_trials and [t.number for t in trials] == list(range(n_trials)), "no overshoot"
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == n_trials, f"{sampler} repeated parameters: {params}"
    for job in jobs:  # each job trains the parameters Optuna asked for
        asked = trials[job.optuna_trial_number].params
        trial = job.config["trial"]
        assert trial["estimator"]["Q"] == asked["estimator.Q"]
        assert trial["training"]["group_size"] == asked["training.group_size"]
    if sampler == "grid":
        points = {(t.params["estimator.Q"], t.params["training.group_size"]) for t in trials}
        assert points == GRID_POINTS, "the grid sampler visits every grid point once"


def test_qmc_trials_follow_one_sobol_sequence(service: StudyService):
    """QMC's first trial is sampled at random; the next eight, asked batch by batch by fresh
    samplers, are the first eight points of one Sobol sequence, which put exactly one point in each
    eighth of every axis (in log space for a log-uniform parameter). Eight independent draws would
    do so with probability 8!/8^8 = 0.24 %."""
    info = service.submit(search("qmc", 9, parallelism=1))
    assert run_like_a_worker(service, lambda number: [0.5]) == 9
    trials = optuna_trials(service, service.get(info.id))[1:]
    unit_q = [(math.log(t.params["estimator.Q"]) - math.log(1e-6)) / (math.log(1e-3) - math.log(1e-6)) for t in trials]
    unit_r = [(t.params["estimator.R"] - 1e-3) / (1e-1 - 1e-3) for t in trials]
    for axis, unit in (("estimator.Q", unit_q), ("estimator.R", unit_r)):
        assert sorted(int(u * 8) for u in unit) == list(range(8)), f"{axis}: {sorted(unit)}"


def test_median_pruner_prunes_after_its_startup_trials(service: StudyService):
    """Two startup trials climb to 0.8; every later trial reports 0.1 and is pruned at its first
    report (Optuna's default pruner would wait for five finished trials)."""
    info = service.submit(search("random", 6, parallelism=1, pruner={"type": "median", "startup_trials": 2}))
    run_like_a_worker(service, lambda number: [0.5, 0.6, 0.8] if number < 2 else [0.1, 0.1, 0.1])
    states = [t.state for t in optuna_trials(service, service.get(info.id))]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED] * 4
    jobs = sorted(service.jobs(info.id), key=lambda j: j.optuna_trial_number)
    assert [j.status for j in jobs] == ["succeeded"] * 2 + ["pruned"] * 4


def test_median_pruner_waits_for_its_warmup_steps(service: StudyService):
    info = service.submit(
        search("random", 4, parallelism=1, pruner={"type": "median", "startup_trials": 1, "warmup_steps": 3})
    )
    run_like_a_worker(service, lambda number: [0.9] * 6 if number == 0 else [0.1] * 6)
    trials = optuna_trials(service, service.get(info.id))
    assert [t.state for t in trials][1:] == [optuna.trial.TrialState.PRUNED] * 3
    assert all(max(t.intermediate_values) == 3 for t in trials[1:]), "pruned at the first step after the warm-up"


def test_hyperband_pruner_prunes_the_worse_trials_at_its_rung(service: StudyService):
    """Hyperband with ``warmup_steps: 3`` (its min_resource) over trials of 3 reported steps: one
    bracket, one rung at step 3. After four trials finished at 0.9, every trial reporting 0.1 is
    pruned at step 3 and every one reporting 0.95 runs to the end (Optuna's default pruner would
    prune nothing before five finished trials)."""
    info = service.submit(search("random", 10, parallelism=1, pruner={"type": "hyperband", "warmup_steps": 3}))
    run_like_a_worker(service, lambda number: [0.9] * 3 if number < 4 else ([0.95] * 3 if number % 2 else [0.1] * 3))
    trials = optuna_trials(service, service.get(info.id))
    summary = [(t.number, t.state.name, sorted(t.intermediate_values)) for t in trials]
    assert len(trials) == 10
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials if t.number < 4 or t.number % 2), summary
    low = [t for t in trials[4:] if t.number % 2 == 0]
    assert all(t.state == optuna.trial.TrialState.PRUNED and sorted(t.intermediate_values) == [1, 2, 3] for t in low), (
        summary
    )


def test_no_pruner_never_prunes(service: StudyService):
    """With ``pruner: none`` a trial far below every finished one still runs to its end."""
    info = service.submit(search("random", 7, parallelism=1))
    run_like_a_worker(service, lambda number: [0.9] * 4 if number < 5 else [0.0] * 4)
    trials = optuna_trials(service, service.get(info.id))
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 7
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in trials)
