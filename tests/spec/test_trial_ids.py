"""A trial's id (its run folder, its checkpoints) and a study file's key never move when a release
adds a field with a default: ids made by release 0.1.0 stay what they were, and a run folder and a
job database that release wrote (tests/data/upgrade) resume from their checkpoints after the upgrade.

The next release is simulated by subclasses that keep the models' names and add defaulted fields,
a new nested block among them."""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from krpo_bench import cli
from krpo_bench.service.studies import StudyService
from krpo_bench.settings import trial_folder
from krpo_bench.spec import study as study_module
from krpo_bench.spec import trial as trial_module
from krpo_bench.spec.identity import HASHED_FIELDS, study_file_key
from krpo_bench.training.trial import RESULT_FILE, run_trial

UPGRADE = Path(__file__).resolve().parents[1] / "data" / "upgrade"
GOLDEN = json.loads((UPGRADE / "ids.json").read_text())
TRIAL_ID = "upgrade-0bd84703fc1d"  # tests/data/upgrade/trial.yaml's run folder under release 0.1.0
STUDY_ID = "1288b1ca-de1f-48c6-89b5-1c0fa16700a4"  # study.yaml's study in home/jobs-0.1.0.sqlite
JOB_TRIAL_ID = "1288b1ca-db1b3ad4f5814350"  # its one job's run folder


class Logging(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    every: int = 10


class TrainingSpec(trial_module.TrainingSpec):
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)


class TrialSpec(trial_module.TrialSpec):
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    logging: Logging = Field(default_factory=Logging)


class Resources(study_module.Resources):
    preemptible: bool = False


class StudySpec(study_module.StudySpec):
    resources: Resources = Field(default_factory=Resources)
    notify: list[str] = Field(default_factory=list)


def test_release_0_1_0_ids_and_study_keys_are_unchanged():
    for case in GOLDEN["trials"]:
        assert trial_module.TrialSpec.model_validate(case["config"]).resolved_id() == case["id"]
    for case in GOLDEN["studies"]:
        assert study_file_key(study_module.StudySpec.model_validate(case["study"])) == case["run_key"]


def test_every_frozen_model_and_field_is_still_in_the_schema():
    """A renamed model or a removed field would move ids silently: the frozen table names the
    models by class name, so renaming one must fail here (keep the name, or list it anew)."""
    found: dict[str, type[BaseModel]] = {}

    def walk(annotation: typing.Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.__name__ not in found:
            found[annotation.__name__] = annotation
            for field in annotation.model_fields.values():
                walk(field.annotation)
        for arg in typing.get_args(annotation):
            walk(arg)

    walk(trial_module.TrialSpec)
    walk(study_module.StudySpec)
    for name, fields in HASHED_FIELDS.items():
        assert name in found, f"spec model {name} is gone"
        assert fields <= set(found[name].model_fields), f"{name} lost {sorted(fields - set(found[name].model_fields))}"


def test_a_release_that_adds_defaulted_fields_keeps_every_id_and_key():
    for case in GOLDEN["trials"]:
        assert TrialSpec.model_validate(case["config"]).resolved_id() == case["id"]
    for case in GOLDEN["studies"]:
        assert study_file_key(StudySpec.model_validate(case["study"])) == case["run_key"]


def test_a_new_field_changes_the_id_only_when_set_to_something_else_than_its_default():
    config = GOLDEN["trials"][0]["config"]
    old = GOLDEN["trials"][0]["id"]

    def resolved(**blocks: dict) -> str:
        merged = {**config, **{k: {**config.get(k, {}), **v} for k, v in blocks.items()}}
        return TrialSpec.model_validate(merged).resolved_id()

    assert resolved(training={"warmup_ratio": 0.0}) == old
    assert resolved(logging={"every": 10}) == old
    assert len({old, resolved(training={"warmup_ratio": 0.1}), resolved(logging={"every": 20})}) == 3
    assert resolved(training={"max_steps": 151}) != old, "a field of release 0.1.0 is hashed as before"
    key = GOLDEN["studies"][0]["run_key"]
    study = GOLDEN["studies"][0]["study"]
    assert study_file_key(StudySpec.model_validate({**study, "notify": []})) == key
    assert study_file_key(StudySpec.model_validate({**study, "notify": ["me@example.org"]})) != key


def test_warm_starts_at_its_default_keeps_every_trial_id():
    """``model.tiny.warm_starts`` came after release 0.1.0: written out as 1 it moves no trial id; 2
    (trials spreading over two warm starts) is another trial. (A study file's key hashes its base
    block as written, so the files that never write the field keep theirs: the release-0.1.0 test.)"""

    def with_warm_starts(config: dict, value: int) -> dict:
        model = config.get("model", {"name": "tiny-arith"})
        return {**config, "model": {**model, "tiny": {**model.get("tiny", {}), "warm_starts": value}}}

    for case in GOLDEN["trials"]:
        assert trial_module.TrialSpec.model_validate(with_warm_starts(case["config"], 1)).resolved_id() == case["id"]
        assert trial_module.TrialSpec.model_validate(with_warm_starts(case["config"], 2)).resolved_id() != case["id"]


@pytest.fixture
def upgraded_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data home holding what release 0.1.0 left, opened by the next release's schema."""
    home = tmp_path / "home"
    shutil.copytree(UPGRADE / "home" / "trials", home / "trials")
    shutil.copy(UPGRADE / "home" / "jobs-0.1.0.sqlite", home / "krpo-bench.db")
    monkeypatch.setenv("KRPO_BENCH_HOME", str(home))
    monkeypatch.setattr(trial_module, "TrialSpec", TrialSpec)
    return home


@pytest.mark.slow
def test_a_trial_file_resumes_from_its_checkpoint_after_the_upgrade(upgraded_home: Path, tmp_path: Path):
    result = CliRunner().invoke(
        cli.app, ["trial", str(UPGRADE / "trial.yaml"), "--mlflow", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (upgraded_home / "trials").iterdir()) == sorted([JOB_TRIAL_ID, TRIAL_ID])
    stored = json.loads((upgraded_home / "trials" / TRIAL_ID / RESULT_FILE).read_text())
    assert (stored["status"], stored["resumed_from"], stored["steps"]) == ("succeeded", 2, 3)


@pytest.mark.slow
def test_a_study_in_the_job_database_resumes_from_its_checkpoint_after_the_upgrade(upgraded_home: Path, tmp_path: Path):
    mlflow = f"sqlite:///{tmp_path / 'mlflow.db'}"
    service = StudyService(f"sqlite:///{upgraded_home / 'krpo-bench.db'}", mlflow)
    spec = StudySpec.model_validate(yaml.safe_load((UPGRADE / "study.yaml").read_text()))
    info = service.submit(spec, idempotency_key=study_file_key(spec))  # what `krpo-bench run` does
    assert (info.id, info.total) == (STUDY_ID, 1), "the file finds the study release 0.1.0 made"
    job = service.queue.claim("upgraded-worker", 600)
    assert job is not None and job.study_id == STUDY_ID
    trial = trial_module.TrialSpec.model_validate(job.config["trial"])  # what the worker's child does
    assert trial.resolved_id() == JOB_TRIAL_ID
    result = run_trial(trial, run_dir=trial_folder(trial.resolved_id()), tracking_uri=mlflow)
    assert (result.status, result.resumed_from, result.steps) == ("succeeded", 2, 3)
    service.engine.dispose()
