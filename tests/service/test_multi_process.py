"""Multi-process trials on CPU through the worker's own launcher path (worker -> launcher ->
accelerate/torchrun -> two gloo ranks): one MLflow run and one result, written by the main rank;
both ranks train and checkpoint; the final accuracy is over the whole test set; SIGTERM stops every
rank at one checkpoint, a killed worker takes the whole process tree down, and the retry resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from krpo_bench.models import build_tiny_arith
from krpo_bench.models.hf import load_pretrained
from krpo_bench.service.studies import StudyService
from krpo_bench.settings import data_home
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.training.evaluation import evaluate
from tests.service.test_workers import wait_for
from tests.trial_specs import tiny_trial

pytestmark = pytest.mark.slow

LEASE_S = 5.0


@pytest.fixture
def service(tmp_path: Path) -> StudyService:
    build_tiny_arith()  # once here, not by both ranks at the same time
    return StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")


def two_process_study(name: str, **training) -> dict:
    base = {k: v for k, v in tiny_trial(**training).items() if k != "name"}
    return {"name": name, "kind": "ablation", "base": base, "resources": {"gpus_per_trial": 2, "max_attempts": 3}}


def start_worker(service: StudyService, *extra: str) -> subprocess.Popen:
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
    return subprocess.Popen(cmd, env=dict(os.environ, KRPO_BENCH_CPU_THREADS="2"), start_new_session=True)


def steps_logged(client: MlflowClient, run_id: str, key: str = "train/reward") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def trial_processes(job_id: str) -> list[int]:
    """Live pids whose command line names the job's file (the launcher and its ranks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if job_id in cmdline and "krpo_bench.service" in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def run_folder(job) -> Path:
    return data_home() / "trials" / job.config["trial"]["trial_id"]


def test_two_process_trial_trains_on_both_ranks_and_reports_once(service: StudyService):
    info = service.submit(two_process_study("two-ranks", steps=6, checkpoint_every=3, eval_every=3))
    worker = start_worker(service, "--exit-when-idle")
    assert worker.wait(timeout=300) == 0
    job = service.jobs(info.id)[0]
    assert job.status == "succeeded", job.last_error
    assert [a.outcome for a in service.queue.list_attempts(job.id)] == ["succeeded"]

    client = MlflowClient(service.mlflow_uri)
    runs = client.search_runs([service.get(info.id).mlflow_experiment_id], f"tags.`krpo.job_id` = '{job.id}'")
    assert [r.info.run_id for r in runs] == [job.mlflow_run_id], "one MLflow run, from the main rank"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["krpo.processes"] == "2"
    assert steps_logged(client, job.mlflow_run_id) == list(range(1, 7))
    assert steps_logged(client, job.mlflow_run_id, "eval/accuracy") == [0, 3, 6]
    assert run.data.metrics["final/accuracy"] == job.result["final_accuracy"]

    folder = run_folder(job)
    assert (folder / "result.json").exists() and job.result["steps"] == 6
    checkpoint = folder / "checkpoint-6"
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}, (
        "both ranks took part in training and in the checkpoint"
    )
    # The sharded final evaluation covers the same test set as one process evaluating the final model.
    spec = TrialSpec.model_validate(job.config["trial"])
    model, tokenizer = load_pretrained(checkpoint, name="tiny-arith", dtype=torch.float32, device="cpu")
    t = spec.training
    single = evaluate(
        model,
        tokenizer,
        build_task(spec.task),
        max_new_tokens=t.max_completion_length,
        k=t.pass_at_k,
        temperature=t.temperature,
        batch_size=t.eval_batch_size,
        seed=t.seed + 6,
    )
    assert single.num_prompts == spec.task.test_size
    assert single.accuracy == job.result["final_accuracy"]


def test_sigterm_stops_every_rank_at_one_checkpoint_a_killed_worker_takes_its_tree_down_and_the_retry_resumes(
    service: StudyService,
):
    info = service.submit(two_process_study("stop-kill-resume", steps=40, checkpoint_every=40))
    client = MlflowClient(service.mlflow_uri)

    def trained(at_least: int):
        job = service.jobs(info.id)[0]
        return job if job.mlflow_run_id and len(steps_logged(client, job.mlflow_run_id)) >= at_least else None

    first = start_worker(service)
    try:
        job = wait_for(lambda: trained(2), 240, "both ranks to train a few steps")
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=180)
    job = service.jobs(info.id)[0]
    assert (job.status, job.failures) == ("queued", 0), "a graceful stop hands the trial back"
    checkpoints = list(run_folder(job).glob("checkpoint-*"))
    assert len(checkpoints) == 1, "the ranks stopped at one step"
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 2 <= stopped_at < 40
    assert {p.name for p in checkpoints[0].glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}

    second = start_worker(service)
    try:
        wait_for(
            lambda: service.jobs(info.id)[0].attempt == 2 and len(trial_processes(job.id)) == 3,
            120,
            "the launcher and both ranks of the second attempt",
        )
        tree = trial_processes(job.id)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=30)
    wait_for(lambda: not trial_processes(job.id), 20, f"the launcher and ranks {tree} to die with their worker")
    wait_for(lambda: service.jobs(info.id)[0].lease_expires_at < datetime.now(UTC), 2 * LEASE_S, "the lease to expire")

    third = start_worker(service, "--exit-when-idle")
    assert third.wait(timeout=300) == 0
    done = service.jobs(info.id)[0]
    assert done.status == "succeeded", done.last_error
    assert [a.outcome for a in service.queue.list_attempts(done.id)] == ["released", "expired", "succeeded"]
    assert done.result["resumed_from"] == stopped_at
    assert done.mlflow_run_id == job.mlflow_run_id, "every attempt continues the same MLflow run"
    assert set(steps_logged(client, done.mlflow_run_id)) == set(range(1, 41))
