"""The estimators' parameter models, and which estimator takes which: torch-free, so validating a
spec (every command that reads one, ``krpo-bench status`` included) never imports torch.

An estimator's class in its own module names its model here as ``Params``; ``PARAMS`` maps each
registered name to it (tests check it agrees with ``ESTIMATORS``).
"""

from __future__ import annotations

from typing import Any, Literal

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


PARAMS: dict[str, type[EstimatorParams]] = {
    "grpo": GRPOParams,
    "dr_grpo": EstimatorParams,
    "rloo": EstimatorParams,
    "reinforce_pp_baseline": ReinforcePPParams,
    "krpo": KalmanParams,
    "krpo_prior": KRPOPriorParams,
    "krpo_persistent": KalmanParams,
    "opo": EstimatorParams,
    "gpg": GPGParams,
    "grpo_passk": GRPOPassKParams,
    "remax": EstimatorParams,
    "maxrl": EstimatorParams,
    "js_shrinkage": EstimatorParams,
    "rae": RAEParams,
    "running_norm": RunningNormParams,
    "ebpo": EBPOParams,
}
"""Each registered estimator's parameter model, by name (the order of ``ESTIMATORS``)."""


NEEDS_GREEDY_COMPLETION: frozenset[str] = frozenset({"remax"})
"""Estimators whose baseline is the reward of one greedy completion per prompt (the trainer draws it)."""


def estimator_params(name: str, params: dict[str, Any]) -> EstimatorParams:
    """Validate ``params`` for estimator ``name`` (raises ValueError / pydantic ValidationError)."""
    if name not in PARAMS:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(sorted(PARAMS))}")
    return PARAMS[name](**params)
