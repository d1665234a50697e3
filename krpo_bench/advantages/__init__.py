"""The estimator zoo: pure, vectorised advantage estimators, registered by name in one table.

``get_estimator("krpo", Q=1e-5, R=1e-2)`` returns a callable ``(rewards, prompt_ids=None, *,
lengths=None, baseline_rewards=None, step=0) -> advantages`` over a ``(num_groups, group_size)``
reward tensor.

Importing the package does not import torch: the catalog (``CATALOG``, every estimator's parameter
model, class path, reference loop and needs) and the parameter models are all a spec needs; the
estimator classes (``ESTIMATORS``, ``Estimator``...) are imported from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from krpo_bench.advantages.catalog import CATALOG, Entry, Need, build_estimator, get_estimator
from krpo_bench.advantages.params import EstimatorParams

if TYPE_CHECKING:
    from krpo_bench.advantages.base import Estimate, Estimator
    from krpo_bench.advantages.kalman import kalman_schedule

    ESTIMATORS: dict[str, type[Estimator]]

_LAZY = {"Estimate": "base", "Estimator": "base", "kalman_schedule": "kalman"}


def __getattr__(name: str) -> Any:
    if name == "ESTIMATORS":  # every estimator class by name, in the catalog's order
        return {estimator: entry.estimator_class() for estimator, entry in CATALOG.items()}
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "CATALOG",
    "ESTIMATORS",
    "Entry",
    "Estimate",
    "Estimator",
    "EstimatorParams",
    "Need",
    "ValidationError",
    "build_estimator",
    "get_estimator",
    "kalman_schedule",
]
