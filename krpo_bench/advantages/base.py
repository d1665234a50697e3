"""Shared pieces of the estimator zoo: the result type, the base class and NaN/order helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Hashable, Sequence

import torch
from pydantic import BaseModel, ConfigDict

GRPO_EPS = 1e-4  # TRL's epsilon for group std normalisation


class EstimatorParams(BaseModel):
    """Parameters every estimator takes. Subclasses add their own typed fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    shuffle_order: bool = False


@dataclass
class Estimate:
    """What an estimator computed for one batch of groups (all tensors shaped like the rewards)."""

    advantages: torch.Tensor
    baseline: torch.Tensor
    scale: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)


class Estimator:
    """A named advantage estimator over a ``(num_groups, group_size)`` reward tensor.

    NaN rewards (unscorable completions) are left out of every baseline and statistic and get
    advantage 0. Calling the estimator returns the advantages; :meth:`estimate` returns them with
    the baseline and scale that produced them.
    """

    name: ClassVar[str]
    Params: ClassVar[type[EstimatorParams]] = EstimatorParams

    def __init__(self, params: EstimatorParams) -> None:
        self.params = params

    def __call__(self, rewards: torch.Tensor, prompt_ids: Sequence[Hashable] | None = None) -> torch.Tensor:
        return self.estimate(rewards, prompt_ids).advantages

    def estimate(self, rewards: torch.Tensor, prompt_ids: Sequence[Hashable] | None = None) -> Estimate:
        """Advantages, baseline and scale for ``rewards`` (shuffled within groups if asked)."""
        if rewards.dim() != 2:
            raise ValueError(f"rewards must be (num_groups, group_size), got shape {tuple(rewards.shape)}")
        if prompt_ids is not None and len(prompt_ids) != rewards.shape[0]:
            raise ValueError(f"got {len(prompt_ids)} prompt ids for {rewards.shape[0]} groups")
        if not self.params.shuffle_order:
            return self._estimate(rewards, prompt_ids)
        perm = torch.rand(rewards.shape, device=rewards.device).argsort(dim=1)
        inverse = perm.argsort(dim=1)
        est = self._estimate(rewards.gather(1, perm), prompt_ids)
        return Estimate(
            advantages=est.advantages.gather(1, inverse),
            baseline=est.baseline.gather(1, inverse),
            scale=est.scale.gather(1, inverse),
            extras=est.extras,
        )

    def _estimate(self, rewards: torch.Tensor, prompt_ids: Sequence[Hashable] | None) -> Estimate:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Cross-step state to checkpoint (empty for stateless estimators)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def group_mean(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of each group's valid rewards, shaped ``(num_groups, 1)`` (0 for an all-NaN group)."""
    count = valid.sum(dim=1, keepdim=True)
    total = torch.where(valid, rewards, 0.0).sum(dim=1, keepdim=True)
    return total / count.clamp(min=1)


def group_std(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected std of each group's valid rewards, ``(num_groups, 1)``; 0 below two values."""
    count = valid.sum(dim=1, keepdim=True)
    centred = torch.where(valid, rewards - group_mean(rewards, valid), 0.0)
    var = centred.square().sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    return var.sqrt()


def masked_std(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected std of all valid entries (a scalar tensor; 0 below two values)."""
    selected = values[valid]
    if selected.numel() < 2:
        return values.new_zeros(())
    return selected.std()
