"""A probe's outcome: its table rows and what the report says about the reference and the run."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass
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
    reference_blocks: int = 0  # K blocks whose jackknife puts the reference's noise in the intervals; 0: older release
    checkpoint_source: dict[str, Any] | None = None  # trial_id and step of a checkpoint named by trial

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        """The result from ``to_json`` output, also where stored JSON holds null for a nan statistic."""
        fields = {
            name: data[name]
            for name, field in cls.__dataclass_fields__.items()
            if name in data or field.default is MISSING
        }
        for name in ("reference_split_cosine", "reference_reward_mean", "wall_time_s"):
            fields[name] = math.nan if fields[name] is None else fields[name]
        fields["rows"] = [
            _current_row({k: math.nan if v is None else v for k, v in row.items()}) for row in fields["rows"]
        ]
        return cls(**fields)


def _current_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row in today's keys: a row stored before the intervals covered the reference's noise
    held the batches-only intervals under ``cos_ci_*`` / ``cos_diff_ci_*``; they move to the
    ``*_batch_ci_*`` keys and the intervals over batches and reference read NaN (not measured)."""
    if "cos_batch_ci_low" in row:
        return row
    moved = {
        f"{name}_batch_ci_{side}": row[f"{name}_ci_{side}"] for name in ("cos", "cos_diff") for side in ("low", "high")
    }
    unmeasured = {f"{name}_ci_{side}": math.nan for name in ("cos", "cos_diff") for side in ("low", "high")}
    return {**row, **moved, **unmeasured}
