"""Kalman-filter baselines (KRPO, arXiv 2505.07527) and their ablation switches.

A scalar Kalman filter runs over each group's rewards in generation order:

    P_pred = P + Q;  K = P_pred / (P_pred + R);  x = x + K (z - x);  P = (1 - K) P_pred

Its gains do not depend on the rewards, so for a shared start (x0, P0) the posterior estimates are
one matrix product ``x = z @ W.T + x0 * c`` with a lower-triangular ``W`` that each estimator builds
once per group size from its parameters. NaN rewards are skipped by the filter (no predict, no
update): valid rewards are moved to the front of their group, filtered, and moved back.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch

from krpo_bench.advantages.base import Estimate, Estimator, group_std
from krpo_bench.advantages.params import GRPO_EPS, KalmanParams, NormalizeKind


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


ScheduleKey = tuple[int, torch.dtype, str]  # group size, dtype, device


def kalman_schedule(params: KalmanParams, group_size: int, dtype: torch.dtype, device: str) -> KalmanSchedule:
    """Gains, variances and the linear maps from rewards to estimates of ``params``' filter
    (computed in float64)."""
    Q, R = params.Q, params.R
    gain, p_pred, p_post = [], [], []
    p = params.P0
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


def _riccati_powers(
    params: KalmanParams, group_size: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, c, d)`` by position such that the posterior variance after ``i + 1`` updates from a
    start ``P`` is ``(a_i P + b_i) / (c_i P + d_i)``: one update ``P <- R (P + Q) / (P + Q + R)`` is
    the Moebius map of ``[[R, R Q], [1, Q + R]]``, so ``i`` updates are its matrix power (each power
    rescaled, which leaves the ratio unchanged)."""
    Q, R = params.Q, params.R
    step = np.array([[R, R * Q], [1.0, Q + R]])
    power = np.eye(2)
    rows = []
    for _ in range(group_size):
        power = step @ power
        power /= np.abs(power).max()
        rows.append(power.reshape(-1).copy())
    coefs = torch.from_numpy(np.array(rows)).to(device=device, dtype=dtype)
    return tuple(coefs[:, j].contiguous() for j in range(4))


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
    """Paper-faithful KRPO: a fresh filter per group, posterior baseline, posterior-std scale
    (``krpo_prior`` is this class with the prior estimate and the innovation std as defaults)."""

    params: KalmanParams
    order_dependent = True

    def __init__(self, params: KalmanParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.schedules: dict[ScheduleKey, KalmanSchedule] = {}

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
        key = (rewards.shape[1], rewards.dtype, str(rewards.device))
        if key not in self.schedules:
            self.schedules[key] = kalman_schedule(p, *key)
        s = self.schedules[key]
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


class KRPOPersistent(Estimator):
    """One filter per prompt id that persists across training steps.

    A prompt's (x, P) starts at (x0, P0) the first time it is seen; its group is filtered in order
    and the final (x, P) is kept for the next time the prompt comes back. Groups sharing an id within
    one batch all start from the stored state; the last of them writes the state back.
    """

    params: KalmanParams
    order_dependent = True

    def __init__(self, params: KalmanParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.states: dict[Hashable, tuple[float, float]] = {}
        self.powers: dict[ScheduleKey, tuple[torch.Tensor, ...]] = {}

    def _estimate(self, rewards, prompt_ids=None):
        p = self.params
        default = (p.x0, p.P0)
        start = np.array([self.states.get(pid, default) for pid in prompt_ids], dtype=np.float64)
        x, var = torch.from_numpy(start).to(dtype=rewards.dtype, device=rewards.device).unbind(1)
        valid = ~rewards.isnan()
        if bool(valid.all()):
            z = rewards
            baseline, p_post, p_pred, x, var, gain = self._filter_dense(z, x, var)
        else:
            z = torch.where(valid, rewards, 0.0)
            baseline, p_post, p_pred, x, var, gain = self._filter_skipping(z, valid, x, var)
        scale = _scale(p.normalize, p_post, p_pred, p.R, p.eps, z, valid)
        advantages = torch.where(valid, (z - baseline) / scale, 0.0)
        self.states.update(zip(prompt_ids, zip(x.tolist(), var.tolist())))
        extras = {
            "kalman_gain_last": float(gain.mean()),
            "posterior_std_last": float(var.sqrt().mean()),
            "tracked_prompts": float(len(self.states)),
        }
        return Estimate(advantages, baseline, scale, extras)

    def _filter_dense(self, z, x, var):
        """Every group through its filter when no reward is NaN: the variances of all positions at
        once from the closed form, then one vector update per position for the estimates."""
        p = self.params
        key = (z.shape[1], z.dtype, str(z.device))
        if key not in self.powers:
            self.powers[key] = _riccati_powers(p, *key)
        a, b, c, d = self.powers[key]
        p_post = (a * var[:, None] + b) / (c * var[:, None] + d)
        p_pred = torch.cat([var[:, None], p_post[:, :-1]], dim=1) + p.Q
        gains = p_pred / (p_pred + p.R)
        estimates = [x]
        for z_i, k_i in zip(z.unbind(1), gains.unbind(1)):
            estimates.append(torch.lerp(estimates[-1], z_i, k_i))  # x + k (z - x)
        kept = estimates[1:] if p.estimate == "posterior" else estimates[:-1]
        return torch.stack(kept, dim=1), p_post, p_pred, estimates[-1], p_post[:, -1], gains[:, -1]

    def _filter_skipping(self, z, valid, x, var):
        """Every group through its filter one position at a time; a NaN reward neither predicts nor
        updates."""
        p = self.params
        baseline, p_post, p_pred = torch.empty_like(z), torch.empty_like(z), torch.empty_like(z)
        gain = torch.zeros_like(x)
        for i in range(z.shape[1]):
            ok = valid[:, i]
            pp = var + p.Q
            k = pp / (pp + p.R)
            x_new = torch.where(ok, x + k * (z[:, i] - x), x)
            var_new = torch.where(ok, (1.0 - k) * pp, var)
            baseline[:, i] = x_new if p.estimate == "posterior" else x
            p_post[:, i], p_pred[:, i] = var_new, pp
            gain = torch.where(ok, k, gain)
            x, var = x_new, var_new
        return baseline, p_post, p_pred, x, var, gain

    def state_dict(self) -> dict:
        return {"states": [[pid, x, v] for pid, (x, v) in self.states.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.states = {
            (tuple(pid) if isinstance(pid, list) else pid): (float(x), float(v))
            for pid, x, v in state.get("states", [])
        }
