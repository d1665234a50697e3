"""The trainer's advantage step without a model: TRL's generation is replaced by a stub that hands
back the batch's rewards, and the accelerator by one that names a rank. Each rank must train on its
own slice of the batch's advantages, and the logged estimator diagnostics must have the values the
filter's own recursion (KRPO.md) gives."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from trl import GRPOTrainer

from krpo_bench.advantages import get_estimator, reference
from krpo_bench.training import trainer as trainer_module
from krpo_bench.training.trainer import BaselineGRPOTrainer

NAN = math.nan


def advantage_step(
    monkeypatch: pytest.MonkeyPatch,
    rewards: list[list[float]],
    estimator: str,
    *,
    rank: int = 0,
    processes: int = 1,
    **params: Any,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Run ``_generate_and_score_completions`` on ``rank`` of ``processes`` for one batch of groups
    (``rewards``, all processes' rollouts, gathered as TRL gathers them); returns the rank's
    advantages and the logged metrics."""
    groups, size = len(rewards), len(rewards[0])
    total = groups * size
    assert total % processes == 0
    local = total // processes
    gathered = torch.tensor([r for g in rewards for r in g], dtype=torch.float32).unsqueeze(1)
    prompt_ids = [f"p{g}" for g in range(groups) for _ in range(size)]

    def generate(self: BaselineGRPOTrainer, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._last_rewards_per_func = gathered  # TRL's _calculate_rewards gathers every process's rollouts
        return {"advantages": torch.zeros(len(inputs)), "completion_mask": torch.ones(len(inputs), 4)}

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", generate)
    monkeypatch.setattr(trainer_module, "gather_object", lambda local_ids: prompt_ids)
    trainer = object.__new__(BaselineGRPOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(process_index=rank, num_processes=processes)
    trainer.state = SimpleNamespace(global_step=1)
    trainer.args = SimpleNamespace(seed=0)
    trainer.num_generations = size
    trainer.reward_weights = torch.ones(1)
    trainer.reward_noise = None
    trainer.estimator = get_estimator(estimator, **params)
    trainer.advantage_sample = deque()
    trainer._logs = {"advantages": deque()}
    trainer._metrics = {"train": defaultdict(list)}
    inputs = [{"prompt_id": prompt_ids[i]} for i in range(rank * local, (rank + 1) * local)]
    output = trainer._generate_and_score_completions(inputs)
    return output["advantages"], dict(trainer._metrics["train"])


REWARDS = [
    [0.0, 1.0, 1.0, 0.0, 1.0, 0.0],
    [1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    [0.5, 0.0, 1.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
]


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_each_rank_trains_on_its_own_slice_of_the_batch_advantages(monkeypatch: pytest.MonkeyPatch, processes: int):
    """The batch's advantages (the plain per-rollout filter over every group) cut into ``processes``
    consecutive slices, rank r taking slice r, as TRL splits the rollouts; with 4 processes, groups
    of 6 straddle ranks."""
    want = torch.tensor([a for g in reference.krpo(REWARDS) for a in g])
    local = len(want) // processes
    single, _ = advantage_step(monkeypatch, REWARDS, "krpo")
    assert torch.allclose(single, want, rtol=1e-5, atol=1e-5)
    slices = [advantage_step(monkeypatch, REWARDS, "krpo", rank=r, processes=processes)[0] for r in range(processes)]
    for rank, got in enumerate(slices):
        assert torch.allclose(got, want[rank * local : (rank + 1) * local], rtol=1e-5, atol=1e-5), rank
    assert torch.equal(torch.cat(slices), single), "the ranks' slices put together are the single-process advantages"


def kalman_recursion(G: int, Q: float, R: float, P0: float) -> tuple[float, float]:
    """(K, P) after G updates of KRPO.md's recursion: P_pred = P + Q, K = P_pred / (P_pred + R),
    P = (1 - K) P_pred."""
    P, K = P0, NAN
    for _ in range(G):
        P_pred = P + Q
        K = P_pred / (P_pred + R)
        P = (1 - K) * P_pred
    return K, P


def posterior_baselines(group: list[float], Q: float, R: float, P0: float) -> list[float]:
    """The filter's posterior estimate x_i after each scored reward (NaN rewards are skipped)."""
    x, P, out = 0.0, P0, []
    for z in group:
        if math.isnan(z):
            continue
        P_pred = P + Q
        K = P_pred / (P_pred + R)
        x += K * (z - x)
        P = (1 - K) * P_pred
        out.append(x)
    return out


@pytest.mark.parametrize(
    ("G", "Q", "R", "P0"), [(6, 0.0, 1e-2, 1.0), (12, 0.0, 0.5, 2.0), (6, 1e-3, 1e-2, 1.0), (16, 0.05, 0.3, 0.5)]
)
def test_kalman_diagnostics_have_the_filters_values(
    monkeypatch: pytest.MonkeyPatch, G: int, Q: float, R: float, P0: float
):
    gen = torch.Generator().manual_seed(G)
    rewards = torch.randint(0, 2, (5, G), generator=gen).double().tolist()
    rewards[0] = [1.0] * G  # zero spread
    rewards[1] = [0.0] * (G - 1) + [NAN]  # zero spread among its scored rewards
    rewards[2][0], rewards[2][1], rewards[2][2] = 0.0, 1.0, NAN
    _, metrics = advantage_step(monkeypatch, rewards, "krpo", Q=Q, R=R, P0=P0)
    K, P = kalman_recursion(G, Q, R, P0)
    if Q == 0.0:  # the closed form: P_G = P0 R / (R + G P0), K_G = P0 / (R + G P0)
        assert K == pytest.approx(P0 / (R + G * P0), rel=1e-12) and P == pytest.approx(P0 * R / (R + G * P0), rel=1e-12)
    assert metrics["adv/kalman_gain_last"] == [pytest.approx(K, rel=1e-6)]
    assert metrics["adv/posterior_std_last"] == [pytest.approx(math.sqrt(P), rel=1e-6)]
    baselines = [x for g in rewards for x in posterior_baselines(g, Q, R, P0)]
    assert metrics["adv/baseline_mean"] == [pytest.approx(sum(baselines) / len(baselines), rel=1e-5)]
    zero_spread = [len({r for r in g if not math.isnan(r)}) == 1 for g in rewards]
    assert sum(zero_spread) >= 2
    assert metrics["adv/frac_zero_std"] == [pytest.approx(sum(zero_spread) / len(rewards))]
    scored = [
        a
        for g, adv in zip(rewards, reference.krpo(rewards, Q=Q, R=R, P0=P0))
        for r, a in zip(g, adv)
        if not math.isnan(r)
    ]
    assert metrics["adv/mean"] == [pytest.approx(sum(scored) / len(scored), rel=1e-4, abs=1e-5)]
    assert metrics["adv/frac_unscorable"] == [pytest.approx(2 / (5 * G))]


def test_group_baseline_diagnostics(monkeypatch: pytest.MonkeyPatch):
    """GRPO's baseline is the group's mean of scored rewards; no Kalman diagnostics are logged."""
    rewards = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, NAN, 1.0], [0.0, 0.0, 0.0, 1.0]]
    _, metrics = advantage_step(monkeypatch, rewards, "grpo")
    assert metrics["adv/baseline_mean"] == [pytest.approx((0.5 * 4 + 1.0 * 3 + 0.25 * 4) / 11)]
    assert metrics["adv/frac_zero_std"] == [pytest.approx(1 / 3)]
    assert "adv/kalman_gain_last" not in metrics and "adv/posterior_std_last" not in metrics
