"""A probe names its checkpoint by trial (``checkpoint: {study, variant, seed, step, grid}``): after a
real tiny study ran, ``krpo-bench probe`` resolves it through the job database to
``<data home>/trials/<trial id>/checkpoint-<step>`` and runs; every refusal names its field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from safetensors.torch import load_file
from typer.testing import CliRunner

from krpo_bench.cli import app
from krpo_bench.probe.checkpoint import CheckpointSource
from krpo_bench.probe.run import _load, probe_id, run_probe
from krpo_bench.probe.spec import CheckpointRef, ProbeSpec, validate_probe
from krpo_bench.service.probe_job import run_probe_job
from krpo_bench.service.studies import StudyService
from krpo_bench.spec.loading import SpecError, parse_yaml
from krpo_bench.spec.study import validate_study
from tests.probe.test_probe import PROBE
from tests.trial_specs import TINY_TASK, tiny_trial

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SOURCE = "ckpt-source"
UNRUN = "ckpt-unrun"
SMALL = {
    **PROBE,
    "estimators": [{"name": "grpo"}, {"name": "rloo"}],
    "group_sizes": [2],
    "batches": 2,
    "prompts_per_batch": 2,
    "reference": {"prompts": 4, "group_size": 2, "chunk_prompts": 2},
}
RLOO_STEP_4 = {"study": SOURCE, "variant": "rloo", "seed": 0, "step": 4}


def _study(name: str, **extra) -> dict:
    """grpo and rloo, seed 0, 6 steps with a checkpoint every 2 (the trials keep steps 4 and 6)."""
    base = tiny_trial(steps=6, checkpoint_every=2)
    base = {**{k: v for k, v in base.items() if k != "name"}, "task": {**TINY_TASK, "train_size": 64, "test_size": 8}}
    variants = {v: {"estimator": {"name": v}} for v in ("grpo", "rloo")}
    return {"name": name, "kind": "ablation", "base": base, "variants": variants, "seeds": 1, **extra}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The source study, submitted and run to its end by a local worker (`krpo-bench worker`), in a
    data home of its own on SQLite; and a study with a grid, submitted but never run."""
    root = tmp_path_factory.mktemp("checkpoint-source")
    home, db, uri = root / "home", f"sqlite:///{root}/jobs.db", f"sqlite:///{root}/mlflow.db"
    service = StudyService(db, uri)
    study_id = service.submit(_study(SOURCE)).id
    worker = ["worker", "--gpus", "cpu", "--slots-per-gpu", "1", "--exit-when-idle", "--db", db, "--mlflow", uri]
    env = dict(os.environ, KRPO_BENCH_HOME=str(home), KRPO_BENCH_CPU_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "krpo_bench.cli", *worker], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    jobs = service.jobs(study_id)
    assert [job.status for job in jobs] == ["succeeded", "succeeded"], done.stderr[-3000:]
    trial_ids = {job.config["variant_name"]: job.config["trial"]["trial_id"] for job in jobs}
    service.submit(_study(UNRUN, grid={"training.learning_rate": [1.0e-5, 3.0e-5]}))  # its trials stay queued
    yield SimpleNamespace(root=root, home=home, db=db, uri=uri, study_id=study_id, trial_ids=trial_ids)
    service.engine.dispose()


def _probe(ran: SimpleNamespace, checkpoint: dict, out: str, home: Path | None = None):
    path = ran.root / f"{out}.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "checkpoint": checkpoint}))
    return CliRunner().invoke(
        app,
        ["probe", str(path), "--db", ran.db, "--mlflow", ran.uri, "--out", str(ran.root / out)],
        env={"KRPO_BENCH_HOME": str(home or ran.home)},
        terminal_width=200,
    )


@pytest.mark.slow
def test_a_probe_names_a_trials_checkpoint_and_runs_as_written_in_any_data_home(
    ran: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    trial_id = ran.trial_ids["rloo"]
    folder = ran.home / "trials" / trial_id / "checkpoint-4"
    first = _probe(ran, RLOO_STEP_4, "first")
    assert first.exit_code == 0, first.output
    assert f"checkpoint: trial {trial_id}, step 4 ({folder})" in first.output  # rloo's trial, not grpo's
    assert "gradient quality against the reference" in first.output
    data = json.loads((ran.root / "first" / "probe.json").read_text())
    assert data["checkpoint_source"] == {"trial_id": trial_id, "step": 4}
    assert data["spec"]["checkpoint"] == {**RLOO_STEP_4, "grid": {}}
    spec = ProbeSpec.model_validate({**SMALL, "checkpoint": RLOO_STEP_4})
    assert data["probe_id"] == probe_id(spec, CheckpointSource(trial_id, 4, Path("/anywhere")))
    page = (ran.root / "first" / "index.html").read_text()
    assert f"variant &#x27;rloo&#x27;, seed 0, step 4 (trial {trial_id}, checkpoint-4)" in page

    # Another data home holding the same trial's folder, the study named by its id: the same probe id.
    other = ran.root / "other-home"
    shutil.copytree(ran.home / "trials" / trial_id, other / "trials" / trial_id)
    again = _probe(ran, {**RLOO_STEP_4, "study": ran.study_id}, "again", home=other)
    assert again.exit_code == 0, again.output
    assert f"({other / 'trials' / trial_id / 'checkpoint-4'})" in again.output
    assert json.loads((ran.root / "again" / "probe.json").read_text())["probe_id"] == data["probe_id"]

    # The weights are the checkpoint's, read outside the data roots (the trial folders are the product's own).
    monkeypatch.setenv("KRPO_BENCH_HOME", str(ran.home))
    model, _ = _load(spec, "cpu", CheckpointSource(trial_id, 4, folder))
    saved = load_file(folder / "model.safetensors")
    warm, _ = _load(ProbeSpec.model_validate(SMALL), "cpu")
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), warm.parameters()))


@pytest.mark.slow
def test_a_probe_posted_to_the_api_resolves_its_trial_reference_in_the_data_home_of_the_worker_that_runs_it(
    ran: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API admits a probe whose reference names a finished trial (the kept step is the worker's
    to find); its job, run as a worker runs it, resolves the reference through the job database."""
    settings = ApiSettings(
        db=ran.db, mlflow_tracking_uri=ran.uri, api_tokens_file=ran.root / "tokens.json", data_roots=(ran.root,)
    )
    probes = {"kept": RLOO_STEP_4, "unkept": {**RLOO_STEP_4, "step": 2}}
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        refused = client.post("/api/v1/studies", json={**SMALL, "checkpoint": {**RLOO_STEP_4, "variant": "krpo"}})
        assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "checkpoint.variant"
        ids = {}
        for name, checkpoint in probes.items():
            posted = client.post(
                "/api/v1/studies", json={**SMALL, "name": name, "checkpoint": checkpoint, "priority": 9}
            )
            assert posted.status_code == 201, posted.text
            ids[posted.json()["id"]] = name
    monkeypatch.setenv("KRPO_BENCH_HOME", str(ran.home))
    service = StudyService(ran.db, ran.uri)
    results = {}
    for _ in probes:
        job = service.queue.claim("worker", 600)  # the probes first: the unrun study's trials wait at priority 0
        payload = {"mlflow_uri": ran.uri, "result_file": str(ran.root / f"{job.id}.json")}
        code = run_probe_job(job, service, payload, should_stop=lambda: False)
        results[ids[job.study_id]] = code, json.loads(Path(payload["result_file"]).read_text())
        service.queue.complete(job.id, job.attempt, results[ids[job.study_id]][1])
    service.engine.dispose()
    code, kept = results["kept"]
    assert code == 0 and kept["status"] == "succeeded", kept.get("error")
    assert kept["checkpoint_source"] == {"trial_id": ran.trial_ids["rloo"], "step": 4}
    code, unkept = results["unkept"]
    assert code == 1 and unkept["error"].startswith("CheckpointNotFound: checkpoint.step: trial "), unkept["error"]
    assert "keeps no checkpoint of step 2" in unkept["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("checkpoint", "home", "said"),
    [
        ({"study": "no-such-study"}, None, ["checkpoint.study: no study 'no-such-study' in the job database"]),
        (
            {"variant": "krpo"},
            None,
            [f"checkpoint.variant: study '{SOURCE}' has no variant 'krpo'; its variants: grpo, rloo"],
        ),
        (
            {"seed": 3},
            None,
            [f"checkpoint.seed: variant 'rloo' of study '{SOURCE}' has no trial of seed 3; its seeds: 0"],
        ),
        ({"step": 2}, None, ["checkpoint.step: trial", "keeps no checkpoint of step 2", "kept steps: 4, 6 (a trial"]),
        ({}, "empty-home", ["checkpoint.step: trial", "keeps no checkpoint of step 4", "kept steps: none"]),
        (
            {"grid": {"training.learning_rate": 1.0e-5}},
            None,
            ["checkpoint.grid: variant 'rloo'", "its grid points: {}"],
        ),
        (
            {"study": UNRUN},
            None,
            [f"checkpoint.grid: variant 'rloo' of study '{UNRUN}' has 2 grid points matching {{}}"],
        ),
        (
            {"study": UNRUN, "grid": {"training.learning_rate": 3.0e-5}},
            None,
            [
                "checkpoint.study: the trial 'rloo' seed 0 at {training.learning_rate: 3e-05} of study "
                f"'{UNRUN}' is queued, not finished: run the study"
            ],
        ),
    ],
)
def test_a_checkpoint_that_names_no_kept_checkpoint_is_refused_naming_its_field(
    ran: SimpleNamespace, checkpoint: dict, home: str | None, said: list[str]
) -> None:
    out = f"refused-{uuid.uuid4().hex}"
    result = _probe(ran, {**RLOO_STEP_4, **checkpoint}, out, home=ran.root / home if home else None)
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert all(part in shown for part in said), shown
    assert not (ran.root / out).exists()  # refused before anything ran


def test_a_checkpoint_reference_is_validated_field_by_field() -> None:
    with pytest.raises(SpecError) as bad:
        validate_probe({**SMALL, "checkpoint": {"study": "s", "variant": "grpo", "seed": -1, "step": 0, "x": 1}})
    assert {e["path"] for e in bad.value.errors} == {"checkpoint.seed", "checkpoint.step", "checkpoint.x"}
    with pytest.raises(SpecError) as neither:
        validate_probe({**SMALL, "checkpoint": 7})
    assert [e["path"] for e in neither.value.errors] == ["checkpoint"]
    path = validate_probe({**SMALL, "checkpoint": "/data/checkpoint-7"})
    assert path.checkpoint == "/data/checkpoint-7" and probe_id(path) != probe_id(ProbeSpec.model_validate(SMALL))


def test_a_probe_run_without_the_resolved_checkpoint_refuses_its_trial_reference(tmp_path: Path) -> None:
    """Where nothing resolved the reference through the job database (a worker's job), the probe
    says so before it loads anything or opens a run."""
    spec = ProbeSpec.model_validate({**SMALL, "checkpoint": RLOO_STEP_4})
    with pytest.raises(ValueError, match=r"^checkpoint: study 'ckpt-source', variant 'rloo', seed 0, step 4 names"):
        run_probe(spec, out=tmp_path / "report", track=False)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("name", ["probe_zoo_checkpoint", "probe_zoo_checkpoint_noisy"])
def test_the_checkpoint_probes_name_a_kept_checkpoint_of_calibration_ladders_grpo_seed_0(name: str) -> None:
    probe = validate_probe(parse_yaml((STUDIES / f"{name}.yaml").read_bytes()))
    ladder = validate_study(parse_yaml((STUDIES / "calibration_ladder.yaml").read_bytes()))
    ref = probe.checkpoint
    assert isinstance(ref, CheckpointRef) and (ref.study, ref.variant, ref.seed, ref.step) == (
        ladder.name,
        "grpo",
        0,
        100,
    )
    [trial] = [t for t in ladder.plan() if t.variant == ref.variant and t.seed == ref.seed and not t.grid_point]
    assert trial.spec.estimator.advantage_noise == 0
    training = trial.spec.training
    saved = range(training.checkpoint_every, training.max_steps + 1, training.checkpoint_every)
    assert ref.step in list(saved)[-2:]  # a trial keeps its newest two checkpoints
