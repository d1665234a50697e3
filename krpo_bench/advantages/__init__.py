"""The estimator zoo: pure, vectorised advantage estimators registered by name.

``get_estimator("krpo", Q=1e-5, R=1e-2)`` returns a callable ``(rewards, prompt_ids=None, *,
lengths=None, baseline_rewards=None, step=0) -> advantages`` over a ``(num_groups, group_size)``
reward tensor.

Importing the package does not import torch: the parameter models and ``estimator_params`` (all a
spec needs) live in the torch-free ``params``; the estimators themselves (``ESTIMATORS``,
``get_estimator``, ``Estimator``...) are imported from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from krpo_bench.advantages.params import PARAMS, EstimatorParams, estimator_params

if TYPE_CHECKING:
    from krpo_bench.advantages.base import Estimate, Estimator
    from krpo_bench.advantages.kalman import kalman_schedule
    from krpo_bench.advantages.registry import ESTIMATORS, get_estimator

_LAZY = {"ESTIMATORS": "registry", "get_estimator": "registry", "Estimate": "base", "Estimator": "base",
         "kalman_schedule": "kalman"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "ESTIMATORS",
    "Estimate",
    "Estimator",
    "EstimatorParams",
    "PARAMS",
    "ValidationError",
    "estimator_params",
    "get_estimator",
    "kalman_schedule",
]
