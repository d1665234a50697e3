"""The estimators' parameter models: torch-free, so validating a spec (every command that reads one,
``krpo-bench status`` included) never imports torch. Which estimator takes which model is said once,
in :data:`krpo_bench.advantages.catalog.CATALOG`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GRPO_EPS = 1e-4  # TRL's epsilon for group std normalisation


class EstimatorParams(BaseModel):
    """Parameters every estimator takes. Subclasses add their own typed fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    shuffle_order: bool = False
    advantage_noise: float = Field(
        0.0, ge=0.0, le=1e3, description="std of seeded Gaussian noise added to every advantage (a positive control)"
    )


class GRPOParams(EstimatorParams):
    scale: Literal["group", "batch", "none"] = "group"
    eps: float = Field(GRPO_EPS, gt=0, le=1.0)


class ReinforcePPParams(EstimatorParams):
    eps: float = Field(1e-8, gt=0, le=1.0)


EstimateKind = Literal["posterior", "prior"]
NormalizeKind = Literal["posterior_std", "innovation_std", "group_std", "none"]


class KalmanParams(EstimatorParams):
    Q: float = Field(1e-5, ge=0.0, le=1e3, description="process noise")
    R: float = Field(1e-2, gt=0.0, le=1e3, description="measurement noise")
    x0: float = Field(0.0, ge=-1e6, le=1e6, description="initial estimate")
    P0: float = Field(1.0, ge=0.0, le=1e6, description="initial variance")
    estimate: EstimateKind = "posterior"
    normalize: NormalizeKind = "posterior_std"
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="added to the Kalman std scales")


class KRPOPriorParams(KalmanParams):
    estimate: EstimateKind = "prior"
    normalize: NormalizeKind = "innovation_std"


class RAEParams(EstimatorParams):
    decay: float = Field(0.95, ge=0.0, lt=1.0, description="EMA decay d: b <- d b + (1 - d) r")
    per_prompt: bool = Field(False, description="one EMA per prompt id instead of prime-rl's single global one")


class RunningNormParams(EstimatorParams):
    center: Literal["running", "group"] = Field("running", description="subtract the running mean or the group mean")
    scale: Literal["running", "none"] = Field("running", description="divide by the running std + eps, or not")
    eps: float = Field(1e-6, gt=0, le=1.0)


class EBPOParams(EstimatorParams):
    normalize: Literal["global_std", "batch_std", "none"] = Field(
        "global_std", description="divide A by the running reward std, the batch's std of A, or nothing"
    )
    eps: float = Field(1e-6, gt=0, le=1.0)


class GPGParams(EstimatorParams):
    alpha: Literal["paper", "verl"] = Field(
        "paper", description="paper: B / (B - M), M = rollouts of all-equal groups; verl: B / #(r != 0)"
    )


class GRPOPassKParams(EstimatorParams):
    norm_by_std: bool = Field(True, description="divide by the group std + eps (verl's norm_adv_by_std_in_grpo)")
    eps: float = Field(1e-6, gt=0, le=1.0)
