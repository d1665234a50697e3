"""verl's outcome estimators (``verl/trainer/ppo/core_algos.py``): OPO, GPG, pass@k and ReMax.

Read from verl at commit 1dda039 (ESTIMATORS.md section 1). As in verl, a group with a single
(valid) reward has baseline 0 in ``opo`` and ``gpg``; NaN rewards are left out as everywhere else.
"""

from __future__ import annotations

import torch

from krpo_bench.advantages.base import Estimate, Estimator, group_mean, group_std
from krpo_bench.advantages.params import GPGParams, GRPOPassKParams


class OPO(Estimator):
    """On-Policy RL with Optimal reward baseline (arXiv 2505.23585): ``r - sum(L r) / sum(L)``.

    The baseline is the group's length-weighted mean reward, ``L`` the completion lengths (tokens);
    no std scaling. A group whose valid lengths sum to 0 uses the plain mean (verl divides by 0).
    Equal lengths make it ``dr_grpo``.
    """

    def _estimate(self, rewards, prompt_ids=None, *, lengths):
        valid = ~rewards.isnan()
        weights = torch.where(valid, lengths, 0.0)
        total = weights.sum(dim=1, keepdim=True)
        weighted = (weights * torch.where(valid, rewards, 0.0)).sum(dim=1, keepdim=True) / total.clamp(min=1e-30)
        baseline = torch.where(total > 0, weighted, group_mean(rewards, valid))
        baseline = torch.where(valid.sum(dim=1, keepdim=True) > 1, baseline, 0.0).expand_as(rewards)
        advantages = torch.where(valid, rewards - baseline, 0.0)
        return Estimate(advantages, baseline, torch.ones_like(rewards))


class GPG(Estimator):
    """Group Policy Gradient (arXiv 2504.02546): ``alpha * (r - mean_g)`` with a batch-global alpha.

    ``B`` is the number of scored rollouts in the batch. ``alpha: paper`` (default) is the paper's
    gradient correction ``B / (B - M)`` with ``M`` the rollouts of groups whose rewards are all equal
    (they carry no signal); ``alpha: verl`` copies verl, which counts rollouts with a non-zero
    *reward* instead (``B / #correct`` for 0/1 rewards). ``F_norm`` is 1, as verl fixes it.
    """

    params: GPGParams

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        count = valid.sum(dim=1, keepdim=True)
        batch = valid.sum()
        if self.params.alpha == "verl":
            informative = (valid & (rewards != 0)).sum()
        else:
            filled_hi = torch.where(valid, rewards, -torch.inf).amax(dim=1, keepdim=True)
            filled_lo = torch.where(valid, rewards, torch.inf).amin(dim=1, keepdim=True)
            flat = (count > 1) & (filled_hi == filled_lo)
            informative = batch - torch.where(flat, count, 0).sum()
        alpha = batch.to(rewards.dtype) / informative.clamp(min=1).to(rewards.dtype)
        baseline = torch.where(count > 1, group_mean(rewards, valid), 0.0).expand_as(rewards)
        advantages = torch.where(valid, (rewards - baseline) * alpha, 0.0)
        scale = (1.0 / alpha).expand_as(rewards)
        return Estimate(advantages, baseline, scale, {"gpg_alpha": float(alpha)})


class GRPOPassK(Estimator):
    """Pass@k advantage (verl, citing arXiv 2503.19595): only the group's best rollout is credited.

    ``A = r_(1) - r_(2)`` (best minus second-best reward) for the best rollout, 0 for the others,
    divided by ``std_g + eps`` if ``norm_by_std``. Ties at the top give 0 to the whole group; a group
    with fewer than two scored rollouts gets 0 (verl raises for group size < 2, as we do).
    """

    params: GRPOPassKParams

    def _estimate(self, rewards, prompt_ids=None):
        if rewards.shape[1] < 2:
            raise ValueError("grpo_passk needs group_size >= 2")
        valid = ~rewards.isnan()
        top = torch.where(valid, rewards, -torch.inf).topk(2, dim=1)
        if self.params.norm_by_std:
            scale = (group_std(rewards, valid) + self.params.eps).expand_as(rewards)
        else:
            scale = torch.ones_like(rewards)
        first, second = top.values[:, :1], top.values[:, 1:]
        second = torch.where(second.isinf(), first, second)  # fewer than two scored rollouts: no gap
        best = torch.zeros_like(valid).scatter(1, top.indices[:, :1], True) & valid
        baseline = torch.where(best, second, rewards)
        advantages = torch.where(best, (rewards - baseline) / scale, 0.0)
        return Estimate(advantages, baseline, scale)


class ReMax(Estimator):
    """ReMax (arXiv 2310.10505): ``r - b_g``, ``b_g`` the reward of one greedy completion of the prompt.

    The trainer generates and scores the greedy completion. A group whose greedy reward is NaN
    (unscorable) gets advantage 0: it has no baseline.
    """

    def _estimate(self, rewards, prompt_ids=None, *, baseline_rewards):
        baseline = baseline_rewards.unsqueeze(1).expand_as(rewards)
        ok = ~rewards.isnan() & ~baseline.isnan()
        advantages = torch.where(ok, rewards - baseline, 0.0)
        return Estimate(advantages, baseline, torch.ones_like(rewards))
