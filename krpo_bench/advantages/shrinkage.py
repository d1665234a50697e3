"""Shrinkage baselines: the group mean pulled toward other prompts' means.

``js_shrinkage`` shrinks toward the other prompts of the same batch (no state); ``ebpo`` toward a
prior accumulated over every step (Welford state, saved in checkpoints).
"""

from __future__ import annotations

import math

import torch

from krpo_bench.advantages.base import Estimate, Estimator, group_mean, masked_moments, masked_std
from krpo_bench.advantages.params import EBPOParams

NO_SPREAD = 1e-12  # v + s at or below this is rounding error around 0 (all-equal rewards)


class JSShrinkage(Estimator):
    """James-Stein leave-one-out baseline ("Shrinking the Variance", arXiv 2511.03710).

    For rollout j of prompt i: ``b = (1 - lam_i) mu_i^{-j} + lam_i mubar_{-i}`` and ``A = r - b``
    (no std scaling), with ``mu_i^{-j}`` the mean of the group's other rewards, ``mubar_{-i}`` the
    mean of the other prompts' group means, ``lam_i = (n-1)/n * v_{-i} / (v_{-i} + s_{-i})``,
    ``v_{-i}`` the other prompts' mean sampling variance of a group mean
    (``sum_j (r - mu_k)^2 / (m (m-1))``) and ``s_{-i}`` the dispersion of their means around
    ``mubar_{-i}`` (divided by n - 1). The v/s definitions follow a third-party reimplementation
    (UNVERIFIED against the paper body, ESTIMATORS.md 4a). Prompts count when they have at least two
    scored rollouts; the others get advantage 0. With fewer than two such prompts, or
    ``v + s <= 1e-12`` (no spread beyond rounding), ``lam = 0`` (the leave-one-out mean, RLOO).
    """

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        m = valid.sum(dim=1).to(rewards.dtype)
        filled = torch.where(valid, rewards, 0.0)
        mu = group_mean(rewards, valid).squeeze(1)
        eligible = m >= 2
        v = torch.where(valid, rewards - mu[:, None], 0.0).square().sum(dim=1) / (m * (m - 1)).clamp(min=1)
        n = eligible.sum().to(rewards.dtype)
        grand = torch.where(eligible, mu, 0.0).sum() / n.clamp(min=1)
        v, centred = torch.where(eligible, v, 0.0), torch.where(eligible, mu - grand, 0.0)
        others = (n - 1).clamp(min=1)
        other_centred = (centred.sum() - centred) / others
        mubar = other_centred + grand
        v_other = (v.sum() - v) / others
        s_other = ((centred.square().sum() - centred.square()) / others - other_centred.square()).clamp(min=0)
        total = v_other + s_other
        lam = torch.where((total > NO_SPREAD) & (n >= 2), (n - 1) / n * v_other / total, 0.0)
        lam = torch.where(eligible, lam, 0.0)
        loo = (filled.sum(dim=1, keepdim=True) - filled) / (m[:, None] - 1).clamp(min=1)
        baseline = (1 - lam[:, None]) * loo + (lam * mubar)[:, None]
        baseline = torch.where(eligible[:, None], baseline, mu[:, None])
        advantages = torch.where(valid & eligible[:, None], rewards - baseline, 0.0)
        shrinkage = (lam.sum() / n.clamp(min=1)).item()
        return Estimate(advantages, baseline, torch.ones_like(rewards), {"shrinkage_mean": shrinkage})


def _merge(stats: list[float], values: torch.Tensor, valid: torch.Tensor) -> None:
    """Merge the ``valid`` ``values`` into Welford accumulators ``[count, mean, M2]`` (Chan's parallel form)."""
    n_b = valid.sum().item()
    if not n_b:
        return
    mean_b, m2_b = masked_moments(values, valid)
    n_a, mean_a, m2_a = stats
    n = n_a + n_b
    delta = mean_b - mean_a
    stats[:] = [n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n]


def _variance(stats: list[float]) -> float:
    return stats[2] / (stats[0] - 1) if stats[0] >= 2 else 0.0


class EBPO(Estimator):
    """Empirical-Bayes shrinkage toward a global prior (EBPO, arXiv 2602.05165).

    UNVERIFIED reconstruction (ESTIMATORS.md 4b: no code was released and the paper body was not
    checked). Two Welford accumulators persist across steps: one over every reward (mean
    ``mu_glob``, variance ``sigma^2``), one over group means (variance ``tau^2``). Each step first
    merges the batch into both, then ``S_q = tau^2 / (tau^2 + sigma^2 / m_q)`` (``m_q`` scored
    rollouts of the group; 1 when both are 0), ``V_q = S_q mean_q + (1 - S_q) mu_glob`` and
    ``A = r - V_q``, divided by ``sigma + eps`` (``normalize: global_std``, our choice: it stays bounded
    when every advantage of a batch is equal, e.g. an all-fail batch, which dividing by the batch's
    own std would blow up to 1/eps), by the batch's std of A (``batch_std``) or not at all. An
    all-fail group with ``mu_glob > 0`` gets the advertised negative signal ``-(1 - S) mu_glob``.
    """

    params: EBPOParams

    def __init__(self, params: EBPOParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.rewards_stats = [0.0, 0.0, 0.0]
        self.group_stats = [0.0, 0.0, 0.0]

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        m = valid.sum(dim=1, keepdim=True).to(rewards.dtype)
        means = group_mean(rewards, valid)
        _merge(self.rewards_stats, rewards, valid)
        _merge(self.group_stats, means, m > 0)
        sigma2, tau2, prior = _variance(self.rewards_stats), _variance(self.group_stats), self.rewards_stats[1]
        noise = sigma2 / m.clamp(min=1)
        shrink = torch.where(tau2 + noise > 0, tau2 / (tau2 + noise), 1.0)
        baseline = (shrink * means + (1 - shrink) * prior).expand_as(rewards)
        centred = torch.where(valid, rewards - baseline, 0.0)
        if self.params.normalize == "global_std":
            scale = torch.full_like(rewards, math.sqrt(sigma2) + self.params.eps)
        elif self.params.normalize == "batch_std":
            scale = (masked_std(centred, valid) + self.params.eps).expand_as(rewards)
        else:
            scale = torch.ones_like(rewards)
        advantages = centred / scale
        scored = (m > 0).sum().item()
        shrinkage = torch.where(m > 0, shrink, 0.0).sum().item() / scored if scored else 0.0
        extras = {"shrinkage_mean": shrinkage, "prior_mean": prior}
        return Estimate(advantages, baseline, scale, extras)

    def state_dict(self) -> dict:
        return {"rewards": list(self.rewards_stats), "group_means": list(self.group_stats)}

    def load_state_dict(self, state: dict) -> None:
        self.rewards_stats = [float(x) for x in state["rewards"]]
        self.group_stats = [float(x) for x in state["group_means"]]
