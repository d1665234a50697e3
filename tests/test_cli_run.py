"""README's main commands as a user runs them, in fresh processes: ``krpo-bench run`` on a 2-trial
study and again on the same file (it resumes the same study: no new jobs, no trial trained again, a
report each time), ``krpo-bench report``, and ``krpo-bench trial`` on a finished trial (it trains
nothing and keeps the same MLflow run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from krpo_bench.service.studies import StudyService
from tests.trial_specs import tiny_trial

pytestmark = pytest.mark.slow

REPORT_FILES = {"report.html", "summary.csv", "summary.json"}


def tiny(steps: int = 4) -> dict:
    spec = tiny_trial(steps=steps, checkpoint_every=steps, pass_at_k=1)
    spec["task"]["test_size"] = 8
    return spec


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KRPO_BENCH_CPU_THREADS="1", COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "krpo_bench.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"krpo-bench {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def report_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} & REPORT_FILES


def test_run_twice_resumes_the_same_study_and_report_writes_it_again(tmp_path: Path):
    base = {k: v for k, v in tiny().items() if k != "name"}
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "name": "cli-run",
                "kind": "ablation",
                "base": base,
                "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
                "seeds": 1,
            }
        )
    )
    db, mlflow = f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    stores = ["--db", db, "--mlflow", mlflow]

    first = cli("run", str(study_file), "--workers", "2", *stores, "--out", str(tmp_path / "first"))
    service = StudyService(db, mlflow)
    [info] = service.list()
    assert info.status == "succeeded" and info.total == 2 and info.counts == {"succeeded": 2}
    assert info.id in first.stdout and "grpo" in first.stdout and "krpo" in first.stdout
    assert report_files(tmp_path / "first") == REPORT_FILES
    jobs = {j.id: (j.attempt, j.mlflow_run_id, j.result["final_accuracy"]) for j in service.jobs(info.id)}
    assert len(jobs) == 2

    again = cli("run", str(study_file), "--workers", "2", *stores, "--out", str(tmp_path / "again"))
    assert [s.id for s in service.list()] == [info.id], "the same file resumes the same study"
    assert info.id in again.stdout
    assert {j.id: (j.attempt, j.mlflow_run_id, j.result["final_accuracy"]) for j in service.jobs(info.id)} == jobs, (
        "no new jobs and no trial trained again"
    )
    assert report_files(tmp_path / "again") == REPORT_FILES
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary == json.loads((tmp_path / "first" / "summary.json").read_text())

    cli("report", info.id, *stores, "--out", str(tmp_path / "report"))
    assert report_files(tmp_path / "report") == REPORT_FILES
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == summary


def test_trial_command_on_a_finished_trial_trains_nothing_and_keeps_its_run(tmp_path: Path):
    trial_file = tmp_path / "trial.yaml"
    trial_file.write_text(yaml.safe_dump(tiny()))
    mlflow, run_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run"
    args = ("trial", str(trial_file), "--mlflow", mlflow, "--run-dir", str(run_dir))
    cli(*args)
    first = json.loads((run_dir / "result.json").read_text())
    assert first["status"] == "succeeded" and first["steps"] == 4
    checkpoint = run_dir / "checkpoint-4" / "model.safetensors"
    written = checkpoint.stat().st_mtime_ns
    client = MlflowClient(mlflow)
    history = sorted((m.step, m.timestamp) for m in client.get_metric_history(first["mlflow_run_id"], "train/reward"))

    again = cli(*args)
    second = json.loads((run_dir / "result.json").read_text())
    assert second["mlflow_run_id"] == first["mlflow_run_id"] and first["mlflow_run_id"] in again.stdout
    assert second["steps"] == 4 and second["final_accuracy"] == first["final_accuracy"]
    assert checkpoint.stat().st_mtime_ns == written and sorted(p.name for p in run_dir.glob("checkpoint-*")) == [
        "checkpoint-4"
    ]
    assert (
        sorted((m.step, m.timestamp) for m in client.get_metric_history(first["mlflow_run_id"], "train/reward"))
        == history
    )
    runs = client.search_runs([client.get_run(first["mlflow_run_id"]).info.experiment_id])
    assert [r.info.run_id for r in runs] == [first["mlflow_run_id"]] and runs[0].info.status == "FINISHED"


def _workers_of(db: str) -> list[int]:
    """Live worker processes on the job database ``db`` (by their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and b"worker" in args and db.encode() in args:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_run_stopped_by_a_signal_takes_its_workers_down_and_hands_the_trial_back(
    tmp_path: Path, stop_signal: signal.Signals
):
    """SIGTERM (a scheduler, ``timeout``) or SIGHUP (a closed terminal) to ``krpo-bench run`` stops it
    as Ctrl-C does: its workers get SIGTERM, hand the running trial back and exit, and none outlives
    it (they used to go on claiming the study's trials as orphans)."""
    base = {k: v for k, v in tiny(steps=400).items() if k != "name"}
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump({"name": "stopped", "kind": "ablation", "base": base, "variants": {"grpo": {}}, "seeds": 1})
    )
    db, mlflow = f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, KRPO_BENCH_CPU_THREADS="1")
    command = [sys.executable, "-m", "krpo_bench.cli", "run", str(study_file), "--workers", "1"]
    run = subprocess.Popen([*command, "--db", db, "--mlflow", mlflow], env=env, stdout=subprocess.DEVNULL)
    service = StudyService(db, mlflow)
    try:
        deadline = time.monotonic() + 240
        while not any(job.mlflow_run_id for info in service.list() for job in service.jobs(info.id)):
            assert time.monotonic() < deadline and run.poll() is None, "the trial never started"
            time.sleep(0.5)
        assert _workers_of(db), "the run's worker is up"
        run.send_signal(stop_signal)
        assert run.wait(timeout=180) != 0
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 30
    while _workers_of(db) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _workers_of(db), "no worker outlives its run"
    [info] = service.list()
    [job] = service.jobs(info.id)
    assert job.status == "queued" and [a.outcome for a in service.attempts(job.id)] == ["released"]
