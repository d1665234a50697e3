"""The MLflow outbox: a submission commits the study and its jobs only; the experiment
``krpo-study-<id>`` and the parent run follow exactly once (the API's background task, a worker
before a trial, ``krpo-bench run``), also after a process died between the commit and MLflow or
half-way through creating them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from mlflow import MlflowClient

from krpo_bench import tracking
from krpo_bench.service import worker as worker_module
from krpo_bench.service.studies import StudyService, experiment_name
from krpo_bench.service.worker import Worker
from tests.trial_specs import tiny_ablation

SPEC = tiny_ablation("outbox", seeds=2)


def parent_runs(mlflow_uri: str, study_id: str) -> list[Any]:
    """Every MLflow run tagged as the study's parent run, in any experiment."""
    client = MlflowClient(mlflow_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`krpo.role` = 'study' and tags.`krpo.study_id` = '{study_id}'")


def experiments_named(mlflow_uri: str, study_id: str) -> list[Any]:
    return [e for e in MlflowClient(mlflow_uri).search_experiments() if e.name == experiment_name(study_id, "outbox")]


def assert_created_once(service: StudyService, study_id: str) -> None:
    info = service.get(study_id)
    runs = parent_runs(service.mlflow_uri, study_id)
    assert [r.info.run_id for r in runs] == [info.mlflow_parent_run_id]
    assert [e.experiment_id for e in experiments_named(service.mlflow_uri, study_id)] == [info.mlflow_experiment_id]
    assert runs[0].data.params["study.name"] == "outbox"
    assert service.pending_mlflow() == []


def api_settings(tmp_path: Path, mlflow_uri: str) -> ApiSettings:
    (tmp_path / "data").mkdir(exist_ok=True)
    return ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=mlflow_uri,
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path / "data",),
        list_cache_s=0,
    )


def test_the_post_does_not_touch_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("MLflow was called on the request path")

    monkeypatch.setattr(tracking, "MlflowClient", refuse)
    monkeypatch.setattr(tracking, "RunTracker", refuse)
    app = create_app(api_settings(tmp_path, "http://127.0.0.1:9"))  # nothing listens there either
    client = TestClient(app, base_url="http://localhost")  # no lifespan: the background task is not running
    response = client.post("/api/v1/studies", json=SPEC)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["counts"]["queued"] == 2 and body["status"] == "running"
    assert body["mlflow_experiment_id"] is None and body["mlflow_parent_run_id"] is None
    assert app.state.service.pending_mlflow() == [body["id"]]


def test_the_server_creates_the_records_in_the_background(tmp_path: Path) -> None:
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with TestClient(create_app(api_settings(tmp_path, mlflow_uri)), base_url="http://localhost") as client:
        study_id = client.post("/api/v1/studies", json=SPEC).json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/studies/{study_id}").json()["mlflow_parent_run_id"] is None:
            assert time.monotonic() < deadline, "the outbox was not drained"
            time.sleep(0.2)
        assert_created_once(client.app.state.service, study_id)


def test_the_server_stops_after_the_record_in_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutting down waits for the outbox's thread: a cancelled task would leave it reading the
    database while the server disposes of it (a PostgreSQL connection then leaks)."""
    app = create_app(api_settings(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}"))
    service, inside, pending = app.state.service, threading.Event(), app.state.service.pending_mlflow
    in_progress: list[str] = []

    def slow_pending() -> list[str]:
        in_progress.append("reading")
        inside.set()
        time.sleep(1.0)
        listed = pending()
        in_progress.remove("reading")
        return listed

    monkeypatch.setattr(service, "pending_mlflow", slow_pending)
    with TestClient(app, base_url="http://localhost"):
        assert inside.wait(30), "the outbox never ran"
    assert in_progress == [], "the server stopped while its outbox thread was still reading the database"


SUBMIT_AND_DIE = """
import os, sys
from krpo_bench.service.studies import StudyService
service = StudyService(sys.argv[1], sys.argv[2])
print(service.submit({spec}).id, flush=True)
os.kill(os.getpid(), 9)  # dies after the commit, before anything reaches MLflow
"""


def test_a_submitter_killed_after_the_commit_leaves_records_a_restart_creates_once(tmp_path: Path) -> None:
    db_url, mlflow_uri = f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = SUBMIT_AND_DIE.replace("{spec}", repr(SPEC))
    done = subprocess.run(
        [sys.executable, "-c", script, db_url, mlflow_uri], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, done.stderr
    study_id = done.stdout.strip()
    restarted = StudyService(db_url, mlflow_uri)
    assert restarted.pending_mlflow() == [study_id] and restarted.get(study_id).counts["queued"] == 2
    assert not experiments_named(mlflow_uri, study_id)
    creators = [
        threading.Thread(target=StudyService(db_url, mlflow_uri).ensure_mlflow, args=(study_id,)) for _ in range(3)
    ]
    for creator in creators:
        creator.start()
    for creator in creators:
        creator.join()
    assert_created_once(restarted, study_id)
    assert restarted.ensure_mlflow(study_id).parent_run_id == restarted.get(study_id).mlflow_parent_run_id


def test_a_creator_that_died_half_way_is_finished_without_a_second_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url, mlflow_uri = f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    service = StudyService(db_url, mlflow_uri)
    study_id = service.submit(SPEC).id

    def die(*_: Any, **__: Any) -> None:
        raise SystemExit("killed after creating the parent run")

    with monkeypatch.context() as patch:
        patch.setattr(tracking.RunTracker, "log_dict", die)
        with pytest.raises(SystemExit):
            service.ensure_mlflow(study_id)
    assert len(parent_runs(mlflow_uri, study_id)) == 1 and service.pending_mlflow() == [study_id]
    restarted = StudyService(db_url, mlflow_uri)
    restarted.ensure_mlflow(study_id)
    assert_created_once(restarted, study_id)
    run_id = restarted.get(study_id).mlflow_parent_run_id
    study_json = MlflowClient(mlflow_uri).download_artifacts(run_id, "study.json", str(tmp_path))
    assert json.loads(Path(study_json).read_text())["name"] == "outbox"


class FakeProcess:
    """Stands in for a spawned trial process (nothing trains)."""

    def __init__(self, job_file: Path, *_: Any, **__: Any) -> None:
        self.job_file = job_file

    def poll(self) -> int | None:
        return None


def test_a_worker_creates_the_records_before_the_first_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    study_id = service.submit(SPEC).id
    started: list[FakeProcess] = []
    monkeypatch.setattr(
        worker_module, "SpawnedTrial", lambda *a, **kw: started.append(FakeProcess(*a, **kw)) or started[-1]
    )
    worker = Worker(service, devices=["cpu"], slots_per_device=2)
    worker.fork_server = False  # spawned trial processes (faked here), not a fork server
    assert worker._fill_slots() == 2
    assert_created_once(service, study_id)
    parent = service.get(study_id).mlflow_parent_run_id
    job_files = sorted(worker.workdir.glob("*.json"))
    assert len(job_files) == 2
    assert all(json.loads(f.read_text())["job"]["config"]["parent_run_id"] == parent for f in job_files)
