"""Baselines carried across training steps: prime-rl's EMA (``rae``) and ROLL's running moments.

Both keep state between calls (saved in checkpoints through ``state_dict``), so a batch's advantages
depend on every batch before it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from functools import lru_cache

import torch

from krpo_bench.advantages.base import Estimate, Estimator, group_mean, masked_moments
from krpo_bench.advantages.params import RAEParams, RunningNormParams


@lru_cache(maxsize=64)
def _ema_kernels(
    block: int, blocks: int, decay: float, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reward-independent matrices of :func:`ema_before` (computed in float64)."""
    d = torch.tensor(decay, dtype=torch.float64)
    lag = torch.arange(block, dtype=torch.float64)
    # within a block from a zero start: b_k = (1 - d) sum_{j < k} d^(k - 1 - j) z_j; last row: the
    # block's contribution to the next block's start
    diff = lag[:, None] - lag[None, :] - 1
    inner = torch.where(diff >= 0, (1 - d) * d ** diff.clamp(min=0), 0.0)
    within = torch.cat([inner, ((1 - d) * d ** (block - 1 - lag))[None, :]])
    per_block = d**block
    idx = torch.arange(blocks, dtype=torch.float64)
    bdiff = idx[:, None] - idx[None, :] - 1
    across = torch.where(bdiff >= 0, per_block ** bdiff.clamp(min=0), 0.0)

    def to(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    return to(within.T), to(across), to((per_block**idx)[:, None]), to(d**lag)


def ema_before(values: torch.Tensor, decay: float, start: float) -> tuple[torch.Tensor, float]:
    """The EMA each value sees before it updates it, and the EMA after the last one.

    ``b_0 = start``, ``b_{k+1} = decay * b_k + (1 - decay) * values_k``. Computed exactly with two
    levels of blocked lower-triangular products (blocks of about sqrt(n)), so no power of ``decay``
    is ever inverted and nothing overflows.
    """
    n = values.numel()
    if n == 0:
        return values.clone(), start
    block = max(1, math.isqrt(n))
    blocks = -(-n // block)
    z = torch.zeros(blocks * block, dtype=values.dtype, device=values.device)
    z[:n] = values
    within, across, start_coef, in_block = _ema_kernels(block, blocks, decay, values.dtype, str(values.device))
    both = z.view(blocks, block) @ within
    starts = across @ both[:, block:] + start_coef * start
    before = (both[:, :block] + starts * in_block).reshape(-1)[:n]
    final = float(decay * before[-1] + (1 - decay) * values[-1])
    return before, final


class RAE(Estimator):
    """prime-rl's ``rae`` (SPIRAL, arXiv 2506.24119): ``r - b`` with ``b`` an EMA of past rewards.

    Rollouts are visited in row-major order (group by group, each in generation order); each gets
    ``A = r - b`` with the EMA before it, then updates ``b <- d b + (1 - d) r``, so later rollouts of a
    group already see the earlier ones. ``b`` starts at 0 and persists across steps. prime-rl keeps
    one EMA per agent (one for a single-agent task); ``per_prompt: true`` keys it by prompt id
    instead (groups sharing an id in one batch all start from the stored EMA; the last one writes
    it back). NaN rewards neither get an advantage nor update the EMA.
    """

    params: RAEParams
    order_dependent = True

    def __init__(self, params: RAEParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.baseline = 0.0
        self.baselines: dict[Hashable, float] = {}

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        if self.params.per_prompt:
            baseline = self._per_prompt(rewards, valid, prompt_ids)
        elif bool(valid.all()):
            before, self.baseline = ema_before(rewards.reshape(-1), self.params.decay, self.baseline)
            baseline = before.view_as(rewards)
        else:
            flat_valid = valid.reshape(-1)
            before, self.baseline = ema_before(rewards.reshape(-1)[flat_valid], self.params.decay, self.baseline)
            baseline = torch.zeros_like(rewards).reshape(-1)
            baseline[flat_valid] = before
            baseline = baseline.view_as(rewards)
        advantages = torch.where(valid, rewards - baseline, 0.0)
        if self.params.per_prompt:
            extras = {"tracked_prompts": float(len(self.baselines))}
        else:
            extras = {"ema_baseline": self.baseline}
        return Estimate(advantages, baseline, torch.ones_like(rewards), extras)

    def _per_prompt(self, rewards, valid, prompt_ids) -> torch.Tensor:
        if prompt_ids is None:
            raise ValueError("rae with per_prompt: true needs one prompt id per group")
        d = self.params.decay
        stored = [self.baselines.get(pid, 0.0) for pid in prompt_ids]
        b = torch.tensor(stored, dtype=rewards.dtype, device=rewards.device)
        baseline = torch.empty_like(rewards)
        for i in range(rewards.shape[1]):
            baseline[:, i] = b
            b = torch.where(valid[:, i], d * b + (1 - d) * rewards[:, i], b)
        self.baselines.update(zip(prompt_ids, b.tolist()))
        return baseline

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "baselines": [[pid, b] for pid, b in self.baselines.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = float(state.get("baseline", 0.0))
        self.baselines = {
            (tuple(pid) if isinstance(pid, list) else pid): float(b) for pid, b in state.get("baselines", [])
        }


class RunningNorm(Estimator):
    """ROLL's running reward normalisation (``norm_mean_type``/``norm_std_type: running``):
    ``(r - mu_run) / (sigma_run + eps)``.

    ``mu_run``, ``sigma_run`` are the mean and (Bessel) std of every reward seen so far, all steps,
    no decay: each batch's population mean/variance is merged into them (Chan's parallel update,
    starting from mean 0, variance 1, count 1e-24) *before* they are used, so a batch is part of its
    own normaliser. ROLL keeps one state per reward domain but looks it up with the literal key
    "domain" (a KeyError for any real domain name); we keep the single state it intends for one
    task. ``center: group`` uses the group mean instead; ``scale: none`` skips the division.
    """

    params: RunningNormParams

    def __init__(self, params: RunningNormParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def _estimate(self, rewards, prompt_ids=None):
        valid = ~rewards.isnan()
        n = int(valid.sum())
        if n:
            batch_mean, batch_m2 = masked_moments(rewards, valid)
            batch_var = batch_m2 / n
            delta = batch_mean - self.mean
            total = self.count + n
            self.var = (self.var * self.count + delta**2 * self.count * n / total + batch_var * n) / total
            self.mean += delta * n / total
            self.count = total
        std = math.sqrt(self.var * self.count / (self.count - 1)) if self.count > 1 else 0.0
        if self.params.center == "group":
            baseline = group_mean(rewards, valid).expand_as(rewards)
        else:
            baseline = torch.full_like(rewards, self.mean)
        scale = torch.full_like(rewards, std + self.params.eps if self.params.scale == "running" else 1.0)
        advantages = torch.where(valid, (rewards - baseline) / scale, 0.0)
        return Estimate(advantages, baseline, scale, {"running_mean": self.mean, "running_std": std})

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
