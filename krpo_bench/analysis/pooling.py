"""Trials of several studies pooled by configuration (``krpo-bench compare``).

Two trials are of one arm when their trial configs are identical but for the seed and what names
the trial (``name``, ``trial_id``, ``experiment``): the config key hashes the rest. An arm takes its
variant, grid point and label from the first study (in the order given) that has it; a different
config whose (variant, grid point) is already taken keeps its own arm, its variant marked with its
study's short id. A (config, seed) run twice counts once (the first run that finished, else the first).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from krpo_bench.analysis.records import TrialRecord
from krpo_bench.spec.identity import identity_payload
from krpo_bench.spec.trial import TrialSpec

TRIAL_CONFIG = "trial"
"""The key of a job's config that holds its trial config (a `TrialSpec` dump)."""
NAMING_FIELDS = frozenset({"name", "trial_id", "experiment"})
STUDY_MARK_CHARS = 8


def config_key(trial: dict[str, Any]) -> str:
    """SHA-1 of a trial config less its seed and naming fields (:data:`NAMING_FIELDS`), read as a
    `TrialSpec` so that configs stored by releases with fewer defaulted fields hash alike
    (:func:`krpo_bench.spec.identity.identity_payload`)."""
    payload = identity_payload(TrialSpec.model_validate(trial), exclude=NAMING_FIELDS)
    payload["training"].pop("seed", None)
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class StudyTrials:
    """One study's trials: its id, and each trial's record with its trial config."""

    study_id: str
    trials: Sequence[tuple[TrialRecord, dict[str, Any]]]


def _renamed(record: TrialRecord, variant: str) -> str:
    """``record``'s label with its variant part replaced by ``variant``."""
    rest = record.label[len(record.variant) :] if record.label.startswith(record.variant) else ""
    return variant + rest


def pooled_records(studies: Sequence[StudyTrials]) -> list[TrialRecord]:
    """The records of ``studies`` with trials of identical configs as one arm (see the module)."""
    arms: dict[str, tuple[str, Any, str]] = {}  # config key -> (variant, grid point, label)
    taken: set[tuple[str, str]] = set()
    kept: dict[tuple[str, int | None], TrialRecord] = {}
    unseeded: list[TrialRecord] = []
    for study in studies:
        for record, trial in study.trials:
            key = config_key(trial)
            if key not in arms:
                variant = record.variant
                if (variant, repr(record.grid_point)) in taken:
                    variant = f"{record.variant} ({study.study_id[:STUDY_MARK_CHARS]})"
                arms[key] = (variant, record.grid_point, _renamed(record, variant))
                taken.add((variant, repr(record.grid_point)))
            variant, point, label = arms[key]
            pooled = dataclasses.replace(record, variant=variant, grid_point=point, label=label)
            if record.seed is None:
                unseeded.append(pooled)
            elif (key, record.seed) not in kept or (pooled.metrics and not kept[key, record.seed].metrics):
                kept[key, record.seed] = pooled
    return [*kept.values(), *unseeded]
