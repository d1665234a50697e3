"""The estimator catalog: the one place an estimator is registered.

A row names the estimator's parameter model (:mod:`.params`), its class by ``module:Class`` path
(imported on first build, so validating a spec never imports torch), its plain per-rollout loop in
:mod:`.reference` (the oracle the tests hold it to) and the inputs it needs besides the rewards. The
spec's ``estimator:`` union, :func:`get_estimator`, :func:`build_estimator`, the probe's refusals and
the tests of every estimator are built from this table: adding an estimator is its class, its
parameter model (or an existing one), its reference loop and its row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import create_model

from krpo_bench.advantages import reference
from krpo_bench.advantages.params import (
    EBPOParams,
    EstimatorParams,
    GPGParams,
    GRPOParams,
    GRPOPassKParams,
    KalmanParams,
    KRPOPriorParams,
    RAEParams,
    ReinforcePPParams,
    RunningNormParams,
)

if TYPE_CHECKING:
    from krpo_bench.advantages.base import Estimator


class Need(StrEnum):
    """An input an estimator takes besides the rewards, named as ``Estimator.estimate``'s argument."""

    LENGTHS = "lengths"  # completion tokens, shaped like the rewards
    BASELINE_REWARDS = "baseline_rewards"  # one greedy completion's reward per prompt (the trainer draws it)
    PROMPT_IDS = "prompt_ids"  # one id per group


@dataclass(frozen=True)
class Entry:
    """One estimator: its name (``estimator.name`` in a spec), parameter model, class, reference
    loop and needs.

    The reference loop is called ``loop(rewards, **parameters, **inputs)``: the rewards as nested
    lists, the parameter model's own fields (those of :class:`EstimatorParams` aside) by name, and
    by keyword whichever of ``lengths``, ``baseline_rewards``, ``prompt_ids`` and ``state`` (a dict
    it updates in place, for estimators that carry state across steps) its signature names.
    """

    name: str
    params: type[EstimatorParams]
    estimator: str  # "module:Class" in krpo_bench.advantages
    reference: Callable[..., list[list[float]]]
    needs: frozenset[Need] = frozenset()

    @cached_property
    def spec(self) -> type[EstimatorParams]:
        """The ``estimator:`` block's model: :attr:`params` with ``name`` fixed to this estimator.
        Named ``<params>_<name>``: trial ids hash by that name (spec/identity.py)."""
        return create_model(
            f"{self.params.__name__}_{self.name}",
            __base__=self.params,
            name=(Literal[self.name], ...),
        )

    def estimator_class(self) -> type[Estimator]:
        """The class (imports its module, hence torch)."""
        module, cls = self.estimator.split(":")
        return getattr(importlib.import_module(f"krpo_bench.advantages.{module}"), cls)


CATALOG: dict[str, Entry] = {
    entry.name: entry
    for entry in (
        Entry("grpo", GRPOParams, "group:GRPO", reference.grpo),
        Entry("dr_grpo", EstimatorParams, "group:DrGRPO", reference.dr_grpo),
        Entry("rloo", EstimatorParams, "group:RLOO", reference.rloo),
        Entry("reinforce_pp_baseline", ReinforcePPParams, "group:ReinforcePPBaseline", reference.reinforce_pp_baseline),
        Entry("krpo", KalmanParams, "kalman:KRPO", reference.krpo),
        Entry("krpo_prior", KRPOPriorParams, "kalman:KRPO", reference.krpo_prior),
        Entry(
            "krpo_persistent",
            KalmanParams,
            "kalman:KRPOPersistent",
            reference.krpo_persistent,
            frozenset({Need.PROMPT_IDS}),
        ),
        Entry("opo", EstimatorParams, "verl:OPO", reference.opo, frozenset({Need.LENGTHS})),
        Entry("gpg", GPGParams, "verl:GPG", reference.gpg),
        Entry("grpo_passk", GRPOPassKParams, "verl:GRPOPassK", reference.grpo_passk),
        Entry("remax", EstimatorParams, "verl:ReMax", reference.remax, frozenset({Need.BASELINE_REWARDS})),
        Entry("maxrl", EstimatorParams, "group:MaxRL", reference.maxrl),
        Entry("js_shrinkage", EstimatorParams, "shrinkage:JSShrinkage", reference.js_shrinkage),
        Entry("rae", RAEParams, "running:RAE", reference.rae),
        Entry("running_norm", RunningNormParams, "running:RunningNorm", reference.running_norm),
        Entry("ebpo", EBPOParams, "shrinkage:EBPO", reference.ebpo),
    )
}
"""Every estimator, by name (the order of the spec's union and of the zoo's tables)."""

NEEDS_GREEDY_COMPLETION: frozenset[str] = frozenset(
    name for name, entry in CATALOG.items() if Need.BASELINE_REWARDS in entry.needs
)
"""Estimators whose baseline is the reward of one greedy completion per prompt."""


def get_estimator(name: str, *, seed: int = 0, **params: Any) -> Estimator:
    """Estimator ``name`` with ``params`` validated (``get_estimator("krpo", Q=1e-5, R=1e-2)``);
    ``seed`` seeds its advantage noise (the trial seed). Raises ValueError for an unknown name and
    pydantic's ValidationError naming a bad parameter."""
    if name not in CATALOG:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(sorted(CATALOG))}")
    return build_estimator(CATALOG[name].spec(name=name, **params), seed)


def build_estimator(spec: EstimatorParams, seed: int = 0) -> Estimator:
    """The estimator a validated ``estimator:`` block describes; it keeps ``spec`` itself as its
    parameters (no second validation). ``seed`` (the trial's) seeds its advantage noise."""
    return CATALOG[spec.name].estimator_class()(spec, seed)
