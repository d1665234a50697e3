"""Crash, cancel, resume and extend a search with real worker processes, on SQLite and PostgreSQL:
the later command wins, and the job table and Optuna's storage agree afterwards.

A 6-trial random search (tiny-arith, 2 steps) on one CPU worker: the worker is SIGKILLed while a trial
runs (its lease far from expiring), the study is cancelled, then resumed, and a fresh worker runs it
until idle; then it is extended by 2 trials and another worker runs those. Optuna's own API then
reads 6, then 8, COMPLETE trials with distinct parameters and none RUNNING, and the study is stored
succeeded only once every one of its jobs succeeded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna

from krpo_bench.service.db import JobStatus
from krpo_bench.service.optuna_store import optuna_storage
from krpo_bench.service.studies import StudyService
from tests.service.test_faults import tiny, wait_for

LEASE_S = 60  # the killed worker's lease outlives the whole cancel -> resume sequence
SEARCH = {
    "name": "resume-consistency",
    "kind": "search",
    "base": {k: v for k, v in tiny(steps=2).items() if k != "name"},
    "space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}},
    "sampler": "random",
    "n_trials": 6,
    "parallelism": 2,
}


def start_worker(service: StudyService, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "worker",
        "--gpus",
        "cpu",
        "--slots-per-gpu",
        "1",
        "--db",
        service.db_url,
        "--mlflow",
        service.mlflow_uri,
        "--lease-s",
        str(LEASE_S),
        "--heartbeat-s",
        "1",
        *extra,
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=dict(os.environ, KRPO_BENCH_CPU_THREADS="1"),
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_to_idle(service: StudyService, log: Path) -> None:
    worker = start_worker(service, log, "--exit-when-idle")
    try:
        assert worker.wait(timeout=600) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def trial_states(service: StudyService, study_id: str) -> tuple[dict[str, int], list[tuple]]:
    """Optuna's own view of the search: trials per state, and the parameters of the COMPLETE ones."""
    name = service.get(study_id).optuna_study_name
    trials = optuna.load_study(study_name=name, storage=optuna_storage(service.db_url)).get_trials()
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states, [tuple(sorted(t.params.items())) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]


def assert_agree(service: StudyService, study_id: str, complete: int) -> None:
    states, params = trial_states(service, study_id)
    assert states.get("COMPLETE") == complete and "RUNNING" not in states, states
    assert len(set(params)) == complete, "every COMPLETE trial has parameters of its own"
    info = service.get(study_id)
    jobs = service.jobs(study_id)
    assert {j.status for j in jobs} == {JobStatus.SUCCEEDED} and len(jobs) == complete, [j.status for j in jobs]
    assert info.status == "succeeded"
    told = {j.optuna_trial_number for j in jobs}
    assert len(told) == complete, "each job reported to a trial of its own"


def test_crash_cancel_resume_extend_keeps_jobs_and_optuna_in_agreement(db_url: str, tmp_path: Path) -> None:
    service = StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        info = service.submit(SEARCH)
        first = start_worker(service, tmp_path / "worker-0.log")
        try:

            def a_trial_runs_after_one_succeeded() -> bool:
                assert first.poll() is None, (tmp_path / "worker-0.log").read_text(errors="replace")[-3000:]
                counts = service.get(info.id).counts
                return counts["succeeded"] >= 1 and counts["running"] == 1

            wait_for(a_trial_runs_after_one_succeeded, 300, "a second trial to run", every=0.2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # its forked trial dies with it
            first.wait()
        cancelled = service.cancel(info.id)
        assert cancelled.status == "cancelled" and cancelled.counts["running"] == 1
        resumed = service.resume(info.id)
        assert resumed.status == "running" and resumed.counts["running"] == 0, resumed.counts

        run_to_idle(service, tmp_path / "worker-1.log")
        assert_agree(service, info.id, 6)

        assert service.extend(info.id, 2).status == "running"
        run_to_idle(service, tmp_path / "worker-2.log")
        assert_agree(service, info.id, 8)
    finally:
        service.engine.dispose()
