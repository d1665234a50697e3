"""The registry: every estimator class by name, and ``get_estimator`` (this module imports torch;
the parameter models it validates with are in the torch-free ``params``)."""

from __future__ import annotations

from typing import Any

from krpo_bench.advantages.base import Estimator
from krpo_bench.advantages.group import GRPO, RLOO, DrGRPO, MaxRL, ReinforcePPBaseline
from krpo_bench.advantages.kalman import KRPO, KRPOPersistent, KRPOPrior
from krpo_bench.advantages.params import estimator_params
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


def get_estimator(name: str, *, seed: int = 0, **params: Any) -> Estimator:
    """Build the estimator registered as ``name`` with validated ``params``; ``seed`` seeds its
    advantage noise (the trial seed)."""
    validated = estimator_params(name, params)
    return ESTIMATORS[name](validated, seed=seed)
