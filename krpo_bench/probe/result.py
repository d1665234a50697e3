"""A probe's outcome: its table rows and what the report says about the reference and the run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ProbeResult:
    probe_id: str
    rows: list[dict[str, Any]]  # one per (estimator, group size)
    reference_split_cosine: float  # cosine between the two halves of the reference rollouts
    reference_reward_mean: float
    wall_time_s: float
    mlflow_run_id: str
    report_dir: str
    length_normalisation: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        """The result from ``to_json`` output, also where stored JSON holds null for a nan statistic."""
        fields = {name: data[name] for name in cls.__dataclass_fields__}
        for name in ("reference_split_cosine", "reference_reward_mean", "wall_time_s"):
            fields[name] = math.nan if fields[name] is None else fields[name]
        fields["rows"] = [{k: math.nan if v is None else v for k, v in row.items()} for row in fields["rows"]]
        return cls(**fields)
