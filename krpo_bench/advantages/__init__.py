"""The estimator zoo: pure, vectorised advantage estimators registered by name.

``get_estimator("krpo", Q=1e-5, R=1e-2)`` returns a callable ``(rewards, prompt_ids=None, *,
lengths=None, baseline_rewards=None, step=0) -> advantages`` over a ``(num_groups, group_size)``
reward tensor.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from krpo_bench.advantages.base import Estimate, Estimator, EstimatorParams
from krpo_bench.advantages.group import GRPO, RLOO, DrGRPO, MaxRL, ReinforcePPBaseline
from krpo_bench.advantages.kalman import KRPO, KRPOPersistent, KRPOPrior, kalman_schedule
from krpo_bench.advantages.running import RAE, RunningNorm
from krpo_bench.advantages.shrinkage import EBPO, JSShrinkage
from krpo_bench.advantages.verl import GPG, OPO, GRPOPassK, ReMax

ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (
        GRPO, DrGRPO, RLOO, ReinforcePPBaseline, KRPO, KRPOPrior, KRPOPersistent,
        OPO, GPG, GRPOPassK, ReMax, MaxRL, JSShrinkage, RAE, RunningNorm, EBPO,
    )
}


def estimator_params(name: str, params: dict[str, Any]) -> EstimatorParams:
    """Validate ``params`` for estimator ``name`` (raises ValueError / pydantic ValidationError)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name].Params(**params)


def get_estimator(name: str, *, seed: int = 0, **params: Any) -> Estimator:
    """Build the estimator registered as ``name`` with validated ``params``; ``seed`` seeds its
    advantage noise (the trial seed)."""
    validated = estimator_params(name, params)
    return ESTIMATORS[name](validated, seed=seed)


__all__ = [
    "ESTIMATORS",
    "Estimate",
    "Estimator",
    "EstimatorParams",
    "ValidationError",
    "estimator_params",
    "get_estimator",
    "kalman_schedule",
]
