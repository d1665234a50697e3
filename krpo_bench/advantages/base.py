"""Shared pieces of the estimator zoo: the result type, the base class and NaN/order helpers."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from krpo_bench.advantages.catalog import CATALOG, Need
from krpo_bench.advantages.params import EstimatorParams


@dataclass
class Estimate:
    """What an estimator computed for one batch of groups (all tensors shaped like the rewards)."""

    advantages: torch.Tensor
    baseline: torch.Tensor
    scale: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)


def noise_seed(seed: int, step: int) -> int:
    """The generator seed of the advantage noise at ``step`` of a trial seeded ``seed``."""
    return int(np.random.SeedSequence([seed % 2**63, step]).generate_state(1, np.uint64)[0] % 2**63)


class Estimator:
    """An advantage estimator over a ``(num_groups, group_size)`` reward tensor, built by the catalog
    (:mod:`krpo_bench.advantages.catalog`) from its validated ``estimator:`` block.

    NaN rewards (unscorable completions) are left out of every baseline and statistic and get
    advantage 0. Calling the estimator returns the advantages; :meth:`estimate` returns them with
    the baseline and scale that produced them. The catalog names the inputs it ``needs`` besides
    the rewards: completion ``lengths`` ``(num_groups, group_size)``, ``baseline_rewards`` (one per
    group, a greedy completion's) or ``prompt_ids``. ``order_dependent`` estimators give a rollout
    an advantage that depends on where it sits in its group. ``seed`` seeds the advantage noise,
    drawn afresh for every ``step``.
    """

    order_dependent: ClassVar[bool] = False

    def __init__(self, params: EstimatorParams, seed: int = 0) -> None:
        self.params = params
        self.seed = seed
        self.name: str = params.name
        self.needs: frozenset[Need] = CATALOG[self.name].needs

    def __call__(self, rewards: torch.Tensor, prompt_ids: Sequence[Hashable] | None = None, **inputs) -> torch.Tensor:
        """The advantages of :meth:`estimate` (same arguments)."""
        return self.estimate(rewards, prompt_ids, **inputs).advantages

    def estimate(
        self,
        rewards: torch.Tensor,
        prompt_ids: Sequence[Hashable] | None = None,
        *,
        lengths: torch.Tensor | None = None,
        baseline_rewards: torch.Tensor | None = None,
        step: int = 0,
    ) -> Estimate:
        """Advantages, baseline and scale for ``rewards`` (shuffled within groups if asked, noised if asked)."""
        inputs = self._check_inputs(rewards, prompt_ids, lengths, baseline_rewards)
        if not self.params.shuffle_order:
            est = self._estimate(rewards, prompt_ids, **inputs)
        else:
            perm = torch.rand(rewards.shape, device=rewards.device).argsort(dim=1)
            inverse = perm.argsort(dim=1)
            if "lengths" in inputs:
                inputs["lengths"] = inputs["lengths"].gather(1, perm)
            est = self._estimate(rewards.gather(1, perm), prompt_ids, **inputs)
            est = Estimate(
                advantages=est.advantages.gather(1, inverse),
                baseline=est.baseline.gather(1, inverse),
                scale=est.scale.gather(1, inverse),
                extras=est.extras,
            )
        return self._add_noise(est, rewards, step)

    def _check_inputs(
        self,
        rewards: torch.Tensor,
        prompt_ids: Sequence[Hashable] | None,
        lengths: torch.Tensor | None,
        baseline_rewards: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        if rewards.dim() != 2:
            raise ValueError(f"rewards must be (num_groups, group_size), got shape {tuple(rewards.shape)}")
        if prompt_ids is not None and len(prompt_ids) != rewards.shape[0]:
            raise ValueError(f"got {len(prompt_ids)} prompt ids for {rewards.shape[0]} groups")
        if Need.PROMPT_IDS in self.needs and prompt_ids is None:
            raise ValueError(f"{self.name} needs one prompt id per group")
        inputs = {}
        if Need.LENGTHS in self.needs:
            if lengths is None or lengths.shape != rewards.shape:
                got = None if lengths is None else tuple(lengths.shape)
                raise ValueError(
                    f"{self.name} needs completion lengths shaped like the rewards {tuple(rewards.shape)}, got {got}"
                )
            if bool((lengths < 0).any()):
                raise ValueError(f"{self.name}: completion lengths must be >= 0")
            inputs["lengths"] = lengths.to(rewards.dtype)
        if Need.BASELINE_REWARDS in self.needs:
            if baseline_rewards is None or baseline_rewards.shape != rewards.shape[:1]:
                got = None if baseline_rewards is None else tuple(baseline_rewards.shape)
                raise ValueError(f"{self.name} needs one baseline reward per group ({rewards.shape[0]},), got {got}")
            inputs["baseline_rewards"] = baseline_rewards.to(rewards.dtype)
        return inputs

    def _add_noise(self, est: Estimate, rewards: torch.Tensor, step: int) -> Estimate:
        """Seeded N(0, advantage_noise^2) added to every scored rollout's advantage; ``noise_std`` in extras."""
        sigma = self.params.advantage_noise
        if sigma == 0:
            est.extras["noise_std"] = 0.0
            return est
        valid = ~rewards.isnan()
        gen = torch.Generator().manual_seed(noise_seed(self.seed, step))
        noise = torch.randn(valid.shape, generator=gen, dtype=torch.float64) * sigma
        noise = torch.where(valid.cpu(), noise, 0.0).to(device=est.advantages.device, dtype=est.advantages.dtype)
        drawn = noise[valid]
        noise_std = float(drawn.std()) if drawn.numel() > 1 else 0.0
        return Estimate(est.advantages + noise, est.baseline, est.scale, {**est.extras, "noise_std": noise_std})

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


def masked_moments(values: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
    """Mean and sum of squared deviations of the valid entries, in float64 (0, 0 when none)."""
    count = valid.sum().item()
    if not count:
        return 0.0, 0.0
    filled = torch.where(valid, values, 0.0).double()
    mean = filled.sum().item() / count
    return mean, torch.where(valid, filled - mean, 0.0).square().sum().item()
