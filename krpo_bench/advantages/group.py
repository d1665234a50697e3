"""Group-mean baselines: GRPO, Dr. GRPO, RLOO, REINFORCE++ with a group baseline and MaxRL."""

from __future__ import annotations

import torch

from krpo_bench.advantages.base import Estimate, Estimator, group_mean, group_std, masked_std
from krpo_bench.advantages.params import GRPOParams, ReinforcePPParams


class GRPO(Estimator):
    """(r - mean_g) / (std + eps); std is the group's (Bessel), the batch's, or 1 (``scale``)."""

    params: GRPOParams

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        baseline = group_mean(rewards, valid).expand_as(rewards)
        if self.params.scale == "group":
            scale = group_std(rewards, valid).expand_as(rewards) + self.params.eps
        elif self.params.scale == "batch":
            scale = (masked_std(rewards, valid) + self.params.eps).expand_as(rewards)
        else:
            scale = torch.ones_like(rewards)
        advantages = torch.where(valid, (rewards - baseline) / scale, 0.0)
        return Estimate(advantages, baseline, scale)


class DrGRPO(Estimator):
    """r - mean_g (no std scaling)."""

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        baseline = group_mean(rewards, valid).expand_as(rewards)
        advantages = torch.where(valid, rewards - baseline, 0.0)
        return Estimate(advantages, baseline, torch.ones_like(rewards))


class RLOO(Estimator):
    """r - mean of the other valid rewards of the group (0 when it is alone)."""

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        filled = torch.where(valid, rewards, 0.0)
        count = valid.sum(dim=1, keepdim=True)
        baseline = (filled.sum(dim=1, keepdim=True) - filled) / (count - 1).clamp(min=1)
        has_others = valid & (count > 1)
        advantages = torch.where(has_others, rewards - baseline, 0.0)
        return Estimate(advantages, baseline, torch.ones_like(rewards))


class ReinforcePPBaseline(Estimator):
    """r - mean_g, then whitened (zero mean, unit std) over every valid rollout of the batch."""

    params: ReinforcePPParams

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        centred = rewards - group_mean(rewards, valid)
        batch_mean = torch.where(valid, centred, 0.0).sum() / valid.sum().clamp(min=1)
        scale = (masked_std(centred, valid) + self.params.eps).expand_as(rewards)
        baseline = rewards - centred + batch_mean
        advantages = torch.where(valid, (centred - batch_mean) / scale, 0.0)
        return Estimate(advantages, baseline, scale)


MEAN_ROUNDING = 1e-12
"""A group mean at most this times the group's largest |reward| is zero up to the rounding of its sum."""


class MaxRL(Estimator):
    """MaxRL (arXiv 2602.02710): ``(r - mean_g) / mean_g``, 0 where ``mean_g <= 0``.

    "<= 0" is up to rounding (``mean_g <= MEAN_ROUNDING * max |r_g|``): signed rewards that cancel
    (0.7 - 1.0 + 0.3) sum to +-5.6e-17 by the order of the additions, which would otherwise give
    advantages of 1e16.

    GRPO with the group std replaced by the group mean (hard prompts get ~1/p weight); meant for
    non-negative rewards. As prime-rl's ``max_rl``: no epsilon and no extra ``1/G`` factor (the
    official code, Zanette-Labs/MaxRL ``p_normalization``, also multiplies every advantage by
    ``1/G`` and adds 1e-6 to the mean; we leave the 1/G out so the advantage scale, hence the
    learning rate, is comparable with GRPO's).
    """

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        baseline = group_mean(rewards, valid).expand_as(rewards)
        magnitude = torch.where(valid, rewards.abs(), 0.0).amax(dim=-1, keepdim=True)
        positive = baseline > MEAN_ROUNDING * magnitude
        scale = torch.where(positive, baseline, 1.0)
        advantages = torch.where(valid & positive, (rewards - baseline) / scale, 0.0)
        return Estimate(advantages, baseline, scale)
