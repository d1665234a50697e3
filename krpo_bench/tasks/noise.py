"""Seeded reward noise for training rollouts (``task.reward_noise``): the paper's "noisy rollouts".

``flip: p`` replaces a reward r by 1 - r with probability p (a 0/1 reward flips; a graded reward in
[0, 1], such as the paper's 0.01 / 0.5, is reflected about 0.5), then ``gaussian: sigma`` adds
N(0, sigma^2) to every reward. Rewards must lie in [0, 1] for flipping (the task schema checks that
the reward weights sum to at most 1); unscorable (NaN) rewards stay NaN. Held-out evaluation never
sees this noise.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RewardNoise(BaseModel):
    """Noise added to training rewards, per rollout."""

    model_config = ConfigDict(extra="forbid", strict=True)

    flip: float = Field(0.0, ge=0.0, le=1.0, description="probability that a 0/1 reward r becomes 1 - r (0..1)")
    gaussian: float = Field(0.0, ge=0.0, le=100.0, description="std of Gaussian noise added to each reward (>= 0)")

    @property
    def active(self) -> bool:
        """Whether this noise changes any reward."""
        return self.flip > 0 or self.gaussian > 0


def noisy_rewards(rewards: np.ndarray, noise: RewardNoise, seed: int, step: int) -> np.ndarray:
    """``rewards`` with ``noise`` applied; the same (seed, step) gives the same noise.

    ``step`` numbers the generation batch within the trial, so every batch draws fresh noise and a
    resumed trial redraws the noise of the steps it repeats identically.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    scorable = ~np.isnan(rewards)
    if noise.flip > 0 and np.any((rewards[scorable] < 0) | (rewards[scorable] > 1)):
        raise ValueError(
            f"task.reward_noise.flip needs rewards in [0, 1], got {rewards[scorable].min()}..{rewards[scorable].max()}"
        )
    rng = np.random.default_rng([seed, step])
    flips = rng.random(rewards.shape) < noise.flip
    shifts = rng.standard_normal(rewards.shape) * noise.gaussian
    return np.where(flips, 1.0 - rewards, rewards) + shifts
