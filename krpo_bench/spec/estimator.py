"""The ``estimator:`` block of a trial: a name plus that estimator's own typed parameters.

Built from the registry, so ``estimator: {name: krpo, Q: 1e-4}`` is validated against KRPO's
parameters and a typo in a parameter name is an error naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import Field, create_model

from krpo_bench.advantages import PARAMS, EstimatorParams

if TYPE_CHECKING:
    from krpo_bench.advantages import Estimator


def _spec_model(name: str, params: type[EstimatorParams]) -> type[EstimatorParams]:
    return create_model(f"{params.__name__}_{name}", __base__=params, name=(Literal[name], ...))


ESTIMATOR_SPECS = tuple(_spec_model(name, params) for name, params in PARAMS.items())
EstimatorSpec = Annotated[Union[ESTIMATOR_SPECS], Field(discriminator="name")]


def build_estimator(spec: EstimatorParams, seed: int = 0) -> Estimator:
    """The estimator a validated ``estimator:`` block describes; ``seed`` (the trial's) seeds its noise."""
    from krpo_bench.advantages import get_estimator

    return get_estimator(spec.name, seed=seed, **spec.model_dump(exclude={"name"}))
