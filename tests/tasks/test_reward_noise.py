"""Reward noise (``task.reward_noise``): the pure function, its validation, and the trainer hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from krpo_bench.models import load_model
from krpo_bench.spec.loading import SpecError
from krpo_bench.spec.study import validate_study
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.tasks.noise import RewardNoise, noisy_rewards
from krpo_bench.training.evaluation import evaluate
from krpo_bench.training.trainer import BaselineGRPOTrainer
from krpo_bench.training.trial import run_trial
from tests.training.test_trainer import G, make_trainer
from tests.trial_specs import TINY_TASK, tiny_trial

N = 200_000


def test_flip_rate_is_p_within_binomial_bounds() -> None:
    rewards = (np.arange(N) % 3 == 0).astype(float)
    noisy = noisy_rewards(rewards, RewardNoise(flip=0.2), seed=5, step=0)
    assert set(np.unique(noisy)) <= {0.0, 1.0}
    flipped = int(np.sum(noisy != rewards))
    low, high = stats.binom.ppf([0.0005, 0.9995], N, 0.2)
    assert low <= flipped <= high
    # flips are independent of the reward's value
    assert np.mean(noisy[rewards == 1] == 0) == pytest.approx(0.2, abs=0.01)
    assert np.mean(noisy[rewards == 0] == 1) == pytest.approx(0.2, abs=0.01)


def test_gaussian_noise_has_the_stated_std_and_no_bias() -> None:
    rewards = np.full(N, 0.5)
    shifts = noisy_rewards(rewards, RewardNoise(gaussian=0.7), seed=1, step=3) - rewards
    assert abs(shifts.mean()) < 4 * 0.7 / np.sqrt(N)
    assert shifts.std() == pytest.approx(0.7, rel=0.01)
    assert stats.kstest(shifts / 0.7, "norm").pvalue > 1e-4


def test_seeded_by_seed_and_step_and_nan_kept() -> None:
    rewards = np.array([0.0, 1.0, np.nan, 1.0] * 50)
    noise = RewardNoise(flip=0.5, gaussian=0.1)
    same = noisy_rewards(rewards, noise, seed=3, step=7)
    assert np.array_equal(same, noisy_rewards(rewards, noise, seed=3, step=7), equal_nan=True)
    assert not np.array_equal(same, noisy_rewards(rewards, noise, seed=3, step=8), equal_nan=True)
    assert not np.array_equal(same, noisy_rewards(rewards, noise, seed=4, step=7), equal_nan=True)
    assert np.isnan(same[2::4]).all() and not np.isnan(np.delete(same, np.s_[2::4])).any()
    assert np.array_equal(noisy_rewards(rewards, RewardNoise(), 3, 7), rewards, equal_nan=True)


def test_flip_reflects_graded_rewards_and_refuses_rewards_outside_unit_interval() -> None:
    rewards = np.array([0.0, 0.01, 0.5, 1.0])
    assert np.allclose(noisy_rewards(rewards, RewardNoise(flip=1.0), 0, 0), [1.0, 0.99, 0.5, 0.0])
    with pytest.raises(ValueError, match="task.reward_noise.flip needs rewards in"):
        noisy_rewards(np.array([0.0, 1.5]), RewardNoise(flip=0.1), 0, 0)
    assert noisy_rewards(np.array([1.5]), RewardNoise(gaussian=0.1), 0, 0).shape == (1,)


def _study(task: dict) -> dict:
    return {"name": "noise", "kind": "ablation", "base": tiny_trial() | {"task": task}}


@pytest.mark.parametrize(
    ("noise", "path", "value"),
    [
        ({"flip": 1.5}, "base.task.arithmetic.reward_noise.flip", 1.5),
        ({"flip": -0.1}, "base.task.arithmetic.reward_noise.flip", -0.1),
        ({"gaussian": -1.0}, "base.task.arithmetic.reward_noise.gaussian", -1.0),
        ({"flip": "0.2"}, "base.task.arithmetic.reward_noise.flip", "0.2"),
        ({"flipp": 0.2}, "base.task.arithmetic.reward_noise.flipp", 0.2),
    ],
)
def test_bad_noise_values_name_the_field(noise: dict, path: str, value: object) -> None:
    with pytest.raises(SpecError) as caught:
        validate_study(_study({**TINY_TASK, "reward_noise": noise}))
    errors = {e["path"]: e for e in caught.value.errors}
    assert path in errors, errors
    assert errors[path]["value"] == value


def test_flip_needs_reward_weights_summing_to_at_most_one() -> None:
    task = {**TINY_TASK, "rewards": [{"name": "exact"}, {"name": "format"}], "reward_noise": {"flip": 0.2}}
    with pytest.raises(
        SpecError, match=r"reward_noise.flip \(0.2\) needs rewards in \[0, 1\].*sum to at most 1, got 2.0"
    ):
        validate_study(_study(task))
    halves = [{"name": "exact", "weight": 0.5}, {"name": "format", "weight": 0.5}]
    validate_study(_study({**task, "rewards": halves}))
    validate_study(_study({**task, "reward_noise": {"gaussian": 0.5}}))


def test_trainer_feeds_noisy_rewards_to_the_estimator_and_logs_both(tmp_path) -> None:
    trainer, inputs = make_trainer(tmp_path, "dr_grpo")
    noise = RewardNoise(flip=0.3, gaussian=0.2)
    trainer.reward_noise = noise
    trainer.state.global_step = 4
    out = trainer._generate_and_score_completions(inputs)
    clean = trainer._aggregate_rewards(trainer._last_rewards_per_func)
    noisy = torch.as_tensor(noisy_rewards(clean.numpy(), noise, seed=trainer.args.seed, step=4), dtype=clean.dtype)
    groups = noisy.view(-1, G)
    assert torch.allclose(out["advantages"], (groups - groups.mean(dim=1, keepdim=True)).reshape(-1), atol=1e-6)
    metrics = trainer._metrics["train"]
    assert metrics["train/reward_noisy"] == [pytest.approx(noisy.mean().item())]
    assert metrics["reward"] == [pytest.approx(clean.mean().item())]
    assert not torch.allclose(noisy, clean)


def test_trial_passes_the_task_noise_to_the_trainer_and_evaluates_clean(tmp_path) -> None:
    """The trainer gets the task's noise; held-out accuracy is measured without it: every reward
    flipped, the initial accuracy is the clean one of the same weights (not 1 minus it)."""
    config = tiny_trial(steps=1, eval_size=16)
    config["task"] = {**config["task"], "test_size": 16, "reward_noise": {"flip": 1.0, "gaussian": 0.5}}
    spec = TrialSpec.model_validate(config)
    seen = []
    original = BaselineGRPOTrainer._add_reward_noise

    def spy(self, rewards):
        seen.append(self.reward_noise)
        return original(self, rewards)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaselineGRPOTrainer, "_add_reward_noise", spy)
        result = run_trial(spec, run_dir=tmp_path / "run", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert seen == [RewardNoise(flip=1.0, gaussian=0.5)]
    loaded = load_model(spec.model)
    t = spec.training
    clean = evaluate(
        loaded.model,
        loaded.tokenizer,
        build_task(spec.task.model_copy(update={"reward_noise": None})),
        max_new_tokens=t.max_completion_length,
        k=t.pass_at_k,
        temperature=t.temperature,
        limit=t.eval_size,
    )
    assert clean.accuracy != 0.5, "a clean accuracy of 1/2 would hide a flip"
    assert result.initial_accuracy == clean.accuracy
