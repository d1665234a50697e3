"""README's main commands as a user runs them, in fresh processes: ``krpo-bench run`` on a 2-trial
study and again on the same file (it resumes the same study: no new jobs, no trial trained again, a
report each time), ``krpo-bench report``, and ``krpo-bench trial`` on a finished trial (it trains
nothing and keeps the same MLflow run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
