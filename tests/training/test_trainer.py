"""The TRL trainer subclass: same advantages as stock GRPO, estimator swap, diagnostics, state."""

from __future__ import annotations

import json

import pytest
import torch
from trl import GRPOTrainer

from krpo_bench.advantages import ESTIMATORS, Estimator, get_estimator
from krpo_bench.models import load_model
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.training.trainer import ESTIMATOR_STATE_FILE, BaselineGRPOTrainer
from krpo_bench.training.trial import grpo_config
from tests.trial_specs import tiny_trial

G = 8
PROMPTS = 8


def make_trainer(tmp_path, estimator: str, **params) -> tuple[BaselineGRPOTrainer, list[dict]]:
    spec = TrialSpec.model_validate(tiny_trial(estimator={"name": estimator, **params}, steps=4))
    task = build_task(spec.task)
    loaded = load_model(spec.model)
    trainer = BaselineGRPOTrainer(
        model=loaded.model,
        reward_funcs=task.reward_funcs,
        args=grpo_config(spec, tmp_path, use_cuda=False, bf16=False, reward_weights=list(task.reward_weights)),
        train_dataset=task.train,
        processing_class=loaded.tokenizer,
        estimator=get_estimator(estimator, **params),
    )
    trainer.model.train()
    inputs = [dict(task.train[i]) for i in range(PROMPTS) for _ in range(G)]
    return trainer, inputs


def test_grpo_advantages_equal_stock_grpotrainer(tmp_path):
    trainer, inputs = make_trainer(tmp_path, "grpo")
    torch.manual_seed(123)
    ours = trainer._generate_and_score_completions(inputs)
    rewards = trainer._aggregate_rewards(trainer._last_rewards_per_func).view(-1, G)
    torch.manual_seed(123)
    stock = GRPOTrainer._generate_and_score_completions(trainer, inputs)
    assert torch.equal(ours["completion_ids"], stock["completion_ids"])
    assert (rewards.std(dim=1) > 0).any(), "the batch should hold groups with a learning signal"
    assert torch.allclose(ours["advantages"], stock["advantages"], atol=1e-6)


def test_krpo_replaces_advantages_and_logs_diagnostics(tmp_path):
    trainer, inputs = make_trainer(tmp_path, "krpo", Q=1e-5, R=1e-2)
    torch.manual_seed(7)
    out = trainer._generate_and_score_completions(inputs)
    rewards = trainer._aggregate_rewards(trainer._last_rewards_per_func).view(-1, G)
    want = get_estimator("krpo", Q=1e-5, R=1e-2)(rewards).reshape(-1)
    assert torch.allclose(out["advantages"], want)
    metrics = trainer._metrics["train"]
    for key in (
        "adv/mean",
        "adv/std",
        "adv/abs_max",
        "adv/baseline_mean",
        "adv/frac_zero_std",
        "adv/kalman_gain_last",
        "adv/posterior_std_last",
    ):
        assert len(metrics[key]) == 1, key
    assert metrics["adv/abs_max"][0] == pytest.approx(want.abs().max().item())


STATEFUL = sorted(name for name, cls in ESTIMATORS.items() if cls.state_dict is not Estimator.state_dict)


def test_every_estimator_with_cross_step_state_is_checked_below() -> None:
    assert {"krpo_persistent", "rae", "running_norm", "ebpo"} <= set(STATEFUL)


@pytest.mark.parametrize("name", STATEFUL)
def test_estimator_state_is_saved_in_checkpoints_and_restored(tmp_path, name: str) -> None:
    """Whatever the estimator: a checkpoint holds its state and a resumed trainer continues from it."""
    trainer, inputs = make_trainer(tmp_path, name)
    fresh = trainer.estimator.state_dict()
    torch.manual_seed(1)
    trainer._generate_and_score_completions(inputs)
    state = json.loads(json.dumps(trainer.estimator.state_dict()))
    assert state != json.loads(json.dumps(fresh)), "one batch should change the estimator's state"
    trainer.state.global_step = 3
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    trainer._save_checkpoint(trainer.model, trial=None)
    assert json.loads((tmp_path / "checkpoint-3" / ESTIMATOR_STATE_FILE).read_text()) == state
    other, _ = make_trainer(tmp_path / "other", name)
    other.create_optimizer_and_scheduler(num_training_steps=4)
    other._load_optimizer_and_scheduler(str(tmp_path / "checkpoint-3"))
    assert json.loads(json.dumps(other.estimator.state_dict())) == state
    if name == "krpo_persistent":
        assert len(other.estimator.states) == PROMPTS and other.estimator.states == trainer.estimator.states


def test_every_private_trl_member_the_trainer_relies_on_exists_in_the_pinned_trl() -> None:
    """The list in training/trainer.py is the whole reliance on private TRL/transformers members: each
    one is there (an attribute of an instance for the two state holders), and no other private name of
    GRPOTrainer is overridden by our subclass."""
    import inspect

    from trl import GRPOTrainer

    from krpo_bench.training.trainer import PRIVATE_MEMBERS, BaselineGRPOTrainer

    state = {"_metrics", "_logs"}  # set in GRPOTrainer.__init__
    for name in PRIVATE_MEMBERS.keys() - state:
        assert hasattr(GRPOTrainer, name), name
    source = inspect.getsource(GRPOTrainer.__init__)
    assert all(f"self.{name} =" in source for name in state)
    overridden = {
        n for n in vars(BaselineGRPOTrainer) if n.startswith("_") and not n.startswith("__") and hasattr(GRPOTrainer, n)
    }
    assert overridden <= PRIVATE_MEMBERS.keys(), overridden - PRIVATE_MEMBERS.keys()
