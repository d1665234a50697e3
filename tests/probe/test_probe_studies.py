"""A probe submitted as a study (``kind: probe``): one job a worker runs like a trial, an MLflow run
under the study's parent run, the probe report from ``krpo-bench report``; the API admits it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from mlflow import MlflowClient
from typer.testing import CliRunner

from krpo_bench.cli import app
from krpo_bench.service.probe_job import run_probe_job
from krpo_bench.service.studies import StudyService, experiment_name
from tests.probe.test_probe import PROBE

SMALL = {**PROBE, "estimators": [{"name": "grpo"}, {"name": "krpo"}], "group_sizes": [2, 4], "batches": 2}


def _service(tmp_path: Path) -> StudyService:
    return StudyService(f"sqlite:///{tmp_path}/jobs.db", f"sqlite:///{tmp_path}/mlflow.db")


def test_a_probe_study_is_one_job_tagged_like_a_trial(tmp_path: Path) -> None:
    service = _service(tmp_path)
    info = service.submit(SMALL)
    assert (info.kind, info.total, info.status) == ("probe", 1, "running")
    [job] = service.jobs(info.id)
    assert job.trial_key == "probe" and job.status == "queued" and job.max_attempts == 3
    assert job.config["probe"] == {**info.spec, "experiment": experiment_name(info.id, info.name)}
    assert job.config["tags"] == {
        "krpo.study_id": info.id,
        "krpo.study_name": "test-probe",
        "krpo.kind": "probe",
        "krpo.trial_key": "probe",
        "krpo.variant": "probe",
        "krpo.variant_name": "probe",
        "krpo.grid_point": "[]",
        "krpo.seed": "0",
    }
    assert "trial" not in job.config
    assert service.resume(info.id).total == 1 and len(service.jobs(info.id)) == 1  # nothing re-planned
    assert service.results(info.id).variant("probe").n == 0


def test_submit_takes_a_probe_file(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    result = CliRunner().invoke(
        app,
        ["submit", str(path), "--db", f"sqlite:///{tmp_path}/jobs.db", "--mlflow", f"sqlite:///{tmp_path}/mlflow.db"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "(probe): waiting for a worker; 0/1 done" in said and "queued 1" in said
    db = ["--db", f"sqlite:///{tmp_path}/jobs.db", "--mlflow", f"sqlite:///{tmp_path}/mlflow.db"]
    status = CliRunner().invoke(app, ["status", "test-probe", *db], terminal_width=200)
    assert status.exit_code == 0 and "has no result yet" in status.output and "held-out accuracy" not in status.output
    early = CliRunner().invoke(app, ["report", "test-probe", *db], terminal_width=200)
    assert early.exit_code == 2 and "has no result yet (its job: queued)" in " ".join(early.output.split())


def test_a_stopped_probe_stops_between_batches_and_a_retry_reruns_it_in_the_same_run(tmp_path: Path) -> None:
    service = _service(tmp_path)
    study = service.submit(SMALL)
    parent = service.ensure_mlflow(study.id).parent_run_id
    first = service.queue.claim("w", 60)
    payload = {"mlflow_uri": service.mlflow_uri, "result_file": str(tmp_path / "result.json")}

    def job(claimed) -> SimpleNamespace:
        return SimpleNamespace(**{**vars(claimed), "config": {**claimed.config, "parent_run_id": parent}})

    assert run_probe_job(job(first), service, payload, should_stop=lambda: True) == 1
    stopped = json.loads((tmp_path / "result.json").read_text())
    assert stopped["status"] == "error" and stopped["error"] == "ProbeStopped: stopped after batch 1 of 2"
    run_id = service.queue.get_job(first.id).mlflow_run_id
    mlflow = MlflowClient(service.mlflow_uri)
    assert mlflow.get_run(run_id).info.status == "FAILED"
    service.queue.fail(first.id, first.attempt, stopped["error"])
    second = service.queue.claim("w", 60)
    assert second.id == first.id and second.attempt == 2 and second.mlflow_run_id == run_id
    assert run_probe_job(job(second), service, payload, should_stop=lambda: False) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "succeeded" and result["mlflow_run_id"] == run_id
    assert {(r["estimator"], r["group_size"]) for r in result["rows"]} == {
        (e, g) for e in ("grpo", "krpo") for g in (2, 4)
    }
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["krpo.job_id"] == first.id and run.data.tags["krpo.study_id"] == study.id


@pytest.fixture
def client(tmp_path: Path):
    (tmp_path / "data").mkdir()
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path / "data",),
        list_cache_s=0,
        max_model_params=10_000_000,
    )
    with TestClient(create_app(settings), base_url="http://localhost") as test_client:
        yield test_client


def test_the_api_admits_a_probe_and_names_the_field_of_a_bad_one(client: TestClient, tmp_path: Path) -> None:
    created = client.post("/api/v1/studies", json=SMALL)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["kind"], body["total"], body["counts"].get("queued")) == ("probe", 1, 1)
    assert client.get(f"/api/v1/studies/{body['id']}").status_code == 200
    assert [j["trial_key"] for j in client.get(f"/api/v1/studies/{body['id']}/jobs").json()["items"]] == ["probe"]
    page = client.get(f"/studies/{body['id']}/dashboard")
    assert page.status_code == 200 and "has no result yet (its job: queued)" in page.text
    bad = client.post("/api/v1/studies", json={**SMALL, "estimators": [{"name": "grpo"}, {"name": "krpo_fancy"}]})
    assert bad.status_code == 422
    assert "estimators[1]" in {e["path"] for e in bad.json()["errors"]}, bad.json()
    outside = client.post("/api/v1/studies", json={**SMALL, "checkpoint": str(tmp_path / "elsewhere" / "checkpoint-7")})
    assert outside.status_code == 422
    assert {(e["path"], e["type"]) for e in outside.json()["errors"]} == {("checkpoint", "path_outside_data_roots")}
    large = {"name": "tiny-arith", "tiny": {"hidden_size": 1024, "num_layers": 64, "num_heads": 8}}
    too_large = client.post("/api/v1/studies", json={**SMALL, "model": large})
    assert too_large.status_code == 422
    assert {(e["path"], e["type"]) for e in too_large.json()["errors"]} == {("model.tiny", "model_too_large")}


@pytest.mark.slow
def test_run_puts_a_probe_through_a_local_worker_into_mlflow_and_the_report(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    db, uri = f"sqlite:///{tmp_path}/jobs.db", f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(os.environ, KRPO_BENCH_CPU_THREADS="1", COLUMNS="200")

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "krpo_bench.cli", *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    out = cli("run", str(path), "--workers", "1", "--db", db, "--mlflow", uri, "--out", str(tmp_path / "report"))
    assert "gradient quality against the reference" in out and "(probe): succeeded; 1/1 done" in out
    service = StudyService(db, uri)
    [info] = service.list()
    [job] = service.jobs(info.id)
    assert job.status == "succeeded" and job.attempt == 1
    assert {(r["estimator"], r["group_size"]) for r in job.result["rows"]} == {
        (e, g) for e in ("grpo", "krpo") for g in (2, 4)
    }
    run = MlflowClient(uri).get_run(job.mlflow_run_id)
    assert run.info.experiment_id == info.mlflow_experiment_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == info.mlflow_parent_run_id
    assert (run.data.tags["krpo.study_id"], run.data.tags["krpo.kind"]) == (info.id, "probe")
    assert {"probe/krpo/cos_mean", "probe/grpo/snr", "probe/reference_split_cosine"} <= set(run.data.metrics)
    cli("report", info.id, "--db", db, "--mlflow", uri, "--out", str(tmp_path / "again"))
    assert "gradient quality against the reference" in cli("status", info.id, "--db", db, "--mlflow", uri)
    from krpo_bench.dashboards.study import study_dashboard_html

    page = study_dashboard_html(service, info.id)
    assert "<table>" in page and "data:image/png;base64," in page and "krpo" in page
    for folder in (tmp_path / "report", tmp_path / "again"):
        assert {"index.html", "probe.png", "probe.csv", "probe.json"} <= {p.name for p in folder.iterdir()}
        assert (
            json.loads((folder / "probe.json").read_text())["rows"]
            == json.loads((tmp_path / "report" / "probe.json").read_text())["rows"]
        )


def test_upgrading_to_probe_kinds_keeps_every_job_and_downgrading_removes_the_probes(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from krpo_bench.service.db import alembic_config, make_engine, upgrade

    url = f"sqlite:///{tmp_path}/jobs.db"
    upgrade(url, "0003")
    engine = make_engine(url)
    study = (
        "INSERT INTO studies (id, name, kind, spec, status, priority, cancel_requested, created_at, updated_at, "
        "total_jobs, mlflow_pending) VALUES (:id, 'n', :kind, '{}', 'running', 0, 0, '2026-01-01', '2026-01-01', 1, 0)"
    )
    job = (
        "INSERT INTO jobs (id, seq, study_id, trial_key, config, status, priority, attempt, failures, max_attempts, "
        "cancel_requested, gpus, created_at) VALUES (:id, :seq, :study, 'k', '{}', 'queued', 0, 0, 0, 3, 0, 1, '2026-01-01')"
    )
    with engine.begin() as conn:
        conn.execute(text(study), {"id": "old", "kind": "ablation"})
        conn.execute(text(job), {"id": "old-job", "seq": 1, "study": "old"})
        with pytest.raises(IntegrityError):
            with conn.begin_nested():
                conn.execute(text(study), {"id": "early", "kind": "probe"})
    upgrade(engine, "head")
    with engine.begin() as conn:
        conn.execute(text(study), {"id": "p", "kind": "probe"})
        conn.execute(text(job), {"id": "p-job", "seq": 2, "study": "p"})
        assert conn.execute(text("SELECT id FROM jobs ORDER BY seq")).scalars().all() == ["old-job", "p-job"]
        assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id FROM jobs")).scalars().all() == ["old-job"]
        with pytest.raises(IntegrityError):
            conn.execute(text(study), {"id": "late", "kind": "probe"})
    engine.dispose()


def test_a_rerun_probe_gives_the_same_numbers(tmp_path: Path) -> None:
    """What a retried attempt relies on: the probe has no checkpoint, its seed fixes its numbers."""
    from krpo_bench.probe.run import run_probe
    from krpo_bench.probe.spec import ProbeSpec

    spec = ProbeSpec.model_validate({**SMALL, "estimators": [{"name": "krpo"}], "group_sizes": [4]})
    first, again = (run_probe(spec, out=tmp_path / str(i), track=False) for i in range(2))
    assert json.dumps(first.rows) == json.dumps(again.rows)
    assert first.reference_split_cosine == again.reference_split_cosine
