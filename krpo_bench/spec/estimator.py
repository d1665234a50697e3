"""The ``estimator:`` block of a trial: one of the catalog's estimators, told apart by ``name``.

The union is built from :data:`krpo_bench.advantages.catalog.CATALOG`, so ``estimator: {name: krpo,
Q: 1e-4}`` is validated against KRPO's parameter model and a typo in a parameter name is an error
naming it. The validated block is the estimator's parameters: :func:`build_estimator` hands it to
the estimator as it is.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from krpo_bench.advantages.catalog import CATALOG, build_estimator

EstimatorSpec = Annotated[Union[tuple(entry.spec for entry in CATALOG.values())], Field(discriminator="name")]

__all__ = ["EstimatorSpec", "build_estimator"]
