"""Kalman-filter baselines (KRPO, arXiv 2505.07527) and their ablation switches.

A scalar Kalman filter runs over each group's rewards in generation order:

    P_pred = P + Q;  K = P_pred / (P_pred + R);  x = x + K (z - x);  P = (1 - K) P_pred

Its gains do not depend on the rewards, so for a shared start (x0, P0) the posterior estimates are
one matrix product ``x = z @ W.T + x0 * c`` with a lower-triangular ``W`` built once per
``(G, Q, R, P0)``. NaN rewards are skipped by the filter (no predict, no update): valid rewards are
moved to the front of their group, filtered, and moved back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Hashable

import numpy as np
import torch

from krpo_bench.advantages.base import Estimate, Estimator, group_std
from krpo_bench.advantages.params import GRPO_EPS, KRPOPriorParams, KalmanParams, NormalizeKind

@dataclass(frozen=True)
class KalmanSchedule:
    """The reward-independent part of the filter for one group size, all shaped by position."""

    gain: torch.Tensor  # K_i
    p_pred: torch.Tensor  # P_i before the update
    p_post: torch.Tensor  # P_i after the update
    post_weights: torch.Tensor  # (G, G): x_post = z @ post_weights.T + x0 * post_x0
    post_x0: torch.Tensor
    prior_weights: torch.Tensor  # (G, G): x_prior = z @ prior_weights.T + x0 * prior_x0
    prior_x0: torch.Tensor


@lru_cache(maxsize=64)
def kalman_schedule(
    group_size: int, Q: float, R: float, P0: float, dtype: torch.dtype, device: str
) -> KalmanSchedule:
    """Gains, variances and the linear maps from rewards to estimates (computed in float64)."""
    gain, p_pred, p_post = [], [], []
    p = P0
    for _ in range(group_size):
        pp = p + Q
        k = pp / (pp + R)
        p = (1.0 - k) * pp
        gain.append(k)
        p_pred.append(pp)
        p_post.append(p)
    weights = torch.zeros(group_size, group_size, dtype=torch.float64)
    x0_coef = torch.zeros(group_size, dtype=torch.float64)
    row = torch.zeros(group_size, dtype=torch.float64)
    carry = 1.0
    for i, k in enumerate(gain):
        row = row * (1.0 - k)
        row[i] = k
        carry *= 1.0 - k
        weights[i] = row
        x0_coef[i] = carry
    prior_weights = torch.zeros_like(weights)
    prior_weights[1:] = weights[:-1]
    prior_x0 = torch.cat([torch.ones(1, dtype=torch.float64), x0_coef[:-1]])

    def to(t: torch.Tensor | list[float]) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64).to(device=device, dtype=dtype)

    return KalmanSchedule(
        gain=to(gain),
        p_pred=to(p_pred),
        p_post=to(p_post),
        post_weights=to(weights),
        post_x0=to(x0_coef),
        prior_weights=to(prior_weights),
        prior_x0=to(prior_x0),
    )


def _scale(
    normalize: NormalizeKind,
    p_post: torch.Tensor,
    p_pred: torch.Tensor,
    R: float,
    eps: float,
    rewards: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    if normalize == "posterior_std":
        return (p_post.sqrt() + eps).expand_as(rewards)
    if normalize == "innovation_std":
        return ((p_pred + R).sqrt() + eps).expand_as(rewards)
    if normalize == "group_std":
        return (group_std(rewards, valid) + GRPO_EPS).expand_as(rewards)
    return torch.ones_like(rewards)


class KRPO(Estimator):
    """Paper-faithful KRPO: a fresh filter per group, posterior baseline, posterior-std scale."""

    name = "krpo"
    Params = KalmanParams
    params: KalmanParams
    order_dependent = True

    def _estimate(self, rewards, prompt_ids=None):
        p = self.params
        valid = ~rewards.isnan()
        has_nan = not bool(valid.all())
        if has_nan:
            order = (~valid).to(torch.int8).argsort(dim=1, stable=True)
            rewards_c, valid_c = rewards.gather(1, order), valid.gather(1, order)
        else:
            rewards_c, valid_c = rewards, valid
        z = torch.where(valid_c, rewards_c, 0.0)
        s = kalman_schedule(rewards.shape[1], p.Q, p.R, p.P0, rewards.dtype, str(rewards.device))
        if p.estimate == "posterior":
            baseline = torch.addmm(s.post_x0 * p.x0, z, s.post_weights.T) if p.x0 else z @ s.post_weights.T
        else:
            baseline = torch.addmm(s.prior_x0 * p.x0, z, s.prior_weights.T)
        scale = _scale(p.normalize, s.p_post, s.p_pred, p.R, p.eps, z, valid_c)
        advantages = torch.where(valid_c, (z - baseline) / scale, 0.0)
        if has_nan:
            inverse = order.argsort(dim=1)
            advantages, baseline, scale = (t.gather(1, inverse) for t in (advantages, baseline, scale))
        extras = {"kalman_gain_last": float(s.gain[-1]), "posterior_std_last": float(s.p_post[-1].sqrt())}
        return Estimate(advantages, baseline, scale, extras)


class KRPOPrior(KRPO):
    """KRPO with the prior estimate (before z_i) as baseline and the innovation std as scale."""

    name = "krpo_prior"
    Params = KRPOPriorParams


class KRPOPersistent(Estimator):
    """One filter per prompt id that persists across training steps.

    A prompt's (x, P) starts at (x0, P0) the first time it is seen; its group is filtered in order
    and the final (x, P) is kept for the next time the prompt comes back. Groups sharing an id within
    one batch all start from the stored state; the last of them writes the state back.
    """

    name = "krpo_persistent"
    Params = KalmanParams
    params: KalmanParams
    order_dependent = True

    def __init__(self, params: KalmanParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.states: dict[Hashable, tuple[float, float]] = {}

    def _estimate(self, rewards, prompt_ids=None):
        if prompt_ids is None:
            raise ValueError("krpo_persistent needs one prompt id per group")
        p = self.params
        default = (p.x0, p.P0)
        start = np.array([self.states.get(pid, default) for pid in prompt_ids], dtype=np.float64)
        x, var = torch.from_numpy(start).to(dtype=rewards.dtype, device=rewards.device).unbind(1)
        valid = ~rewards.isnan()
        skips = not bool(valid.all())
        z = torch.where(valid, rewards, 0.0) if skips else rewards
        baseline = torch.empty_like(z)
        p_post = torch.empty_like(z)
        p_pred = torch.empty_like(z)
        gain = torch.zeros_like(x)
        for i in range(z.shape[1]):
            pp = var + p.Q
            k = pp / (pp + p.R)
            x_new = x + k * (z[:, i] - x)
            var_new = (1.0 - k) * pp
            if skips:  # a NaN reward neither predicts nor updates
                ok = valid[:, i]
                x_new, var_new = torch.where(ok, x_new, x), torch.where(ok, var_new, var)
                gain = torch.where(ok, k, gain)
            else:
                gain = k
            baseline[:, i] = x_new if p.estimate == "posterior" else x
            p_post[:, i], p_pred[:, i] = var_new, pp
            x, var = x_new, var_new
        scale = _scale(p.normalize, p_post, p_pred, p.R, p.eps, z, valid)
        advantages = torch.where(valid, (z - baseline) / scale, 0.0)
        self.states.update(zip(prompt_ids, zip(x.tolist(), var.tolist())))
        extras = {
            "kalman_gain_last": float(gain.mean()),
            "posterior_std_last": float(var.sqrt().mean()),
            "tracked_prompts": float(len(self.states)),
        }
        return Estimate(advantages, baseline, scale, extras)

    def state_dict(self) -> dict:
        return {"states": [[pid, x, v] for pid, (x, v) in self.states.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.states = {
            (tuple(pid) if isinstance(pid, list) else pid): (float(x), float(v))
            for pid, x, v in state.get("states", [])
        }
