"""The base of every spec model: unknown keys and implicit type coercion are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A spec model that forbids unknown keys and validates in pydantic's strict mode."""

    model_config = ConfigDict(extra="forbid", strict=True)
