"""One trial end to end on CPU: training changes the model, MLflow holds curves and results,
an interrupted trial resumes from its checkpoint in the same run, and seeds reproduce."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from krpo_bench.models import build_tiny_arith
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.training.trial import newest_complete_checkpoint, run_trial
from tests.trial_specs import tiny_trial

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def curve(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("estimator", [{"name": "grpo"}, {"name": "krpo", "Q": 1e-5, "R": 1e-2}])
def test_trial_trains_and_tracks(tmp_path: Path, mlflow_uri: str, estimator: dict):
    spec = TrialSpec.model_validate(tiny_trial(estimator, steps=12, checkpoint_every=6))
    result = run_trial(spec, run_dir=tmp_path / "run", tracking_uri=mlflow_uri)
    assert result.status == "succeeded" and result.steps == 12
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["estimator.name"] == estimator["name"]
    assert run.data.tags["krpo.estimator"] == estimator["name"]
    rewards = curve(client, result.mlflow_run_id, "train/reward")
    assert [s for s, _ in rewards] == list(range(1, 13))
    for key in ("adv/mean", "adv/abs_max", "train/completion_length", "train/step_time_s"):
        assert len(curve(client, result.mlflow_run_id, key)) == 12, key
    if estimator["name"] == "krpo":
        assert len(curve(client, result.mlflow_run_id, "adv/kalman_gain_last")) == 12
    final = run.data.metrics
    assert 0.0 <= final["final/accuracy"] <= 1.0 and final["final/accuracy"] == result.final_accuracy
    assert {s for s, _ in curve(client, result.mlflow_run_id, "eval/accuracy")} == {0, 12}
    before = load_file(build_tiny_arith() / "model.safetensors")
    after = load_file(tmp_path / "run" / "checkpoint-12" / "model.safetensors")
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    assert changed > len(before) // 2, "GRPO should have moved most weight tensors"


def test_interrupted_trial_resumes_in_the_same_run_and_matches_an_uninterrupted_one(tmp_path: Path, mlflow_uri: str):
    spec = TrialSpec.model_validate(tiny_trial({"name": "krpo_persistent"}, steps=12, checkpoint_every=6))
    steps_seen = []

    def stop_after_six() -> bool:
        steps_seen.append(1)
        return len(steps_seen) >= 6

    first = run_trial(spec, run_dir=tmp_path / "a", tracking_uri=mlflow_uri, should_stop=stop_after_six)
    assert first.status == "stopped" and first.steps == 6
    assert (tmp_path / "a" / "checkpoint-6" / "estimator_state.json").exists()
    resumed = run_trial(spec, run_dir=tmp_path / "a", tracking_uri=mlflow_uri)
    assert resumed.status == "succeeded" and resumed.steps == 12 and resumed.resumed_from == 6
    assert resumed.mlflow_run_id == first.mlflow_run_id
    straight = run_trial(spec, run_dir=tmp_path / "b", tracking_uri=mlflow_uri)
    client = MlflowClient(mlflow_uri)
    assert [s for s, _ in curve(client, resumed.mlflow_run_id, "train/reward")] == list(range(1, 13))
    assert curve(client, resumed.mlflow_run_id, "train/reward") == curve(client, straight.mlflow_run_id, "train/reward")
    again = run_trial(spec, run_dir=tmp_path / "a", tracking_uri=mlflow_uri)
    assert again == resumed, "a finished trial returns its stored result"


def test_same_seed_same_curve_different_seed_different_curve(tmp_path: Path, mlflow_uri: str):
    client = MlflowClient(mlflow_uri)
    runs = []
    for name, seed in (("x", 3), ("y", 3), ("z", 4)):
        spec = TrialSpec.model_validate(tiny_trial({"name": "krpo"}, steps=8, seed=seed))
        runs.append(run_trial(spec, run_dir=tmp_path / name, tracking_uri=mlflow_uri).mlflow_run_id)
    x, y, z = (curve(client, r, "train/reward") for r in runs)
    assert x == y
    assert x != z


def test_grpo_raises_heldout_accuracy_above_the_warm_start(tmp_path: Path, mlflow_uri: str):
    config = tiny_trial({"name": "grpo"}, steps=40)
    config["task"]["test_size"] = 200
    result = run_trial(TrialSpec.model_validate(config), run_dir=tmp_path / "run", tracking_uri=mlflow_uri)
    assert result.initial_accuracy is not None and result.final_accuracy is not None
    assert result.final_accuracy >= result.initial_accuracy + 0.10, result


def test_resume_skips_a_newest_checkpoint_torn_mid_save(tmp_path: Path):
    assert newest_complete_checkpoint(tmp_path) is None
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("weights")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / ".checkpoint-staging-123").mkdir()
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")


def test_the_reward_curve_auc_reads_the_whole_log_history_a_resume_restores() -> None:
    """The mean training reward over the steps: trapezoids over (step, reward) of TRL's log history
    (which a resumed trial restores from its checkpoint), other log entries ignored."""
    from krpo_bench.training.trial import reward_curve_auc

    history = [
        {"step": 0, "reward": 0.2},
        {"step": 10, "reward": 0.4, "loss": 1.0},
        {"step": 10, "eval": 1},
        {"step": 30, "reward": 0.8},
    ]
    assert reward_curve_auc(history) == pytest.approx((10 * 0.3 + 20 * 0.6) / 30)
    assert math.isnan(reward_curve_auc([{"step": 3, "loss": 0.1}]))
