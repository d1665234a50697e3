"""A probe's checkpoint named by its source trial (:class:`~krpo_bench.probe.spec.CheckpointRef`):
which trial of the study it names, and which of that trial's kept checkpoints.

The probe layer does not read the job database (tests/test_layers.py): the study service looks
the study up and hands its trials here as data (variant, grid point, seed, status, trial config).
``StudyService.resolve_checkpoint`` (``krpo-bench probe``, and a worker running a submitted probe)
passes the :class:`CheckpointSource` found to :func:`~krpo_bench.probe.run.run_probe`;
``StudyService.checkpoint_trial`` (the API admitting a probe) finds the trial only, without the
filesystem (transformers, which names a checkpoint's files, is imported only to read a trial's
folder). Every error is a :class:`CheckpointNotFound` naming the reference's field
(``checkpoint.study``, ``.variant``, ``.grid``, ``.seed``, ``.step``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krpo_bench.probe.spec import CheckpointRef
from krpo_bench.settings import trial_folder
from krpo_bench.spec.trial import TrialSpec

FINISHED = frozenset({"succeeded", "pruned"})
"""Statuses of a trial that ran to its end (a pruned one stopped early by design)."""
_TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LISTED = 20
"""Values an error lists at most (variants, seeds, grid points)."""


class CheckpointNotFound(ValueError):
    """A reference that names no kept checkpoint: ``field`` is the reference's field at fault
    (``checkpoint.study``, ``.variant``, ``.grid``, ``.seed``, ``.step``), ``reason`` says why and
    what the study has; the message is ``<field>: <reason>``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class StudyTrial:
    """One job of the source study as the job database holds it: its variant and grid point (as
    data), seed, status and trial config (None for a job that trains nothing, e.g. a probe's)."""

    variant: str
    grid_point: Mapping[str, Any]
    seed: int | None
    status: str
    trial: Mapping[str, Any] | None


@dataclass(frozen=True)
class CheckpointSource:
    """The weights a probe loads: a trial's checkpoint of one step, kept in ``folder`` under this
    process's data home. The probe's id hashes ``trial_id`` and ``step``, never ``folder``."""

    trial_id: str
    step: int
    folder: Path

    def identity(self) -> dict[str, Any]:
        """What names these weights in any data home: the trial's id and the step."""
        return {"trial_id": self.trial_id, "step": self.step}


def _listed(values: Sequence[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:LISTED])
    return shown + (f" and {len(values) - LISTED} more" if len(values) > LISTED else "")


def _point(grid_point: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{path}: {value}" for path, value in grid_point.items()) + "}"


def source_trial(ref: CheckpointRef, study: str, trials: Sequence[StudyTrial]) -> StudyTrial:
    """The one trial of ``study`` (its name as shown) that ``ref`` names by variant, grid point
    and seed, once finished; a CheckpointNotFound naming the field otherwise, listing what the study has."""
    trained = [t for t in trials if t.trial is not None]
    if not trained:
        raise CheckpointNotFound(
            "checkpoint.study", f"study {study!r} has no trials that train (a probe study keeps no checkpoint)"
        )
    variants = sorted({t.variant for t in trained})
    if ref.variant not in variants:
        raise CheckpointNotFound(
            "checkpoint.variant", f"study {study!r} has no variant {ref.variant!r}; its variants: {_listed(variants)}"
        )
    of_variant = [t for t in trained if t.variant == ref.variant]
    at_point = [t for t in of_variant if all(p in t.grid_point and t.grid_point[p] == v for p, v in ref.grid.items())]
    points = sorted({_point(t.grid_point) for t in (at_point or of_variant)})
    if not at_point or len(points) > 1:
        which = "no grid point" if not at_point else f"{len(points)} grid points"
        raise CheckpointNotFound(
            "checkpoint.grid",
            f"variant {ref.variant!r} of study {study!r} has {which} matching {_point(ref.grid)}; "
            f"{'its' if not at_point else 'the matching'} grid points: {_listed(points)}",
        )
    seeds = sorted({t.seed for t in at_point if t.seed is not None})
    matching = [t for t in at_point if t.seed == ref.seed]
    if not matching:
        raise CheckpointNotFound(
            "checkpoint.seed",
            f"variant {ref.variant!r} of study {study!r} has no trial of seed {ref.seed}; its seeds: {_listed(seeds)}",
        )
    if len(matching) > 1:
        raise CheckpointNotFound(
            "checkpoint.study",
            f"study {study!r} holds {len(matching)} trials of variant {ref.variant!r}, seed "
            f"{ref.seed} at {points[0]}, where a study plans one",
        )
    trial = matching[0]
    if trial.status not in FINISHED:
        raise CheckpointNotFound(
            "checkpoint.study",
            f"the trial {ref.variant!r} seed {ref.seed}{'' if not ref.grid else ' at ' + points[0]} "
            f"of study {study!r} is {trial.status}, "
            "not finished: run the study to its end first",
        )
    return trial


def kept_steps(run_dir: Path) -> list[int]:
    """Steps of the complete ``checkpoint-<step>`` folders in a trial's run folder (the trainer
    writes its state last; a trial keeps its newest two)."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not run_dir.is_dir():
        return []
    return sorted(
        int(folder.name.rsplit("-", 1)[1])
        for folder in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if folder.name.rsplit("-", 1)[1].isdigit() and (folder / TRAINER_STATE_NAME).is_file()
    )


def checkpoint_source(ref: CheckpointRef, study: str, trials: Sequence[StudyTrial]) -> CheckpointSource:
    """The checkpoint ``ref`` names: its trial among ``study``'s ``trials`` (:func:`source_trial`)
    and that trial's folder of step ``ref.step`` under this process's data home, which must be kept."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    trial_id = TrialSpec.model_validate(source_trial(ref, study, trials).trial).resolved_id()
    if not _TRIAL_ID.fullmatch(trial_id):
        raise CheckpointNotFound(
            "checkpoint.study", f"the job database gives trial id {trial_id[:200]!r}, not a trial id"
        )
    run_dir = trial_folder(trial_id)
    steps = kept_steps(run_dir)
    if ref.step not in steps:
        raise CheckpointNotFound(
            "checkpoint.step",
            f"trial {trial_id} ({ref.variant!r} seed {ref.seed} of study {study!r}) keeps no "
            f"checkpoint of step {ref.step} in {run_dir}; kept steps: {_listed(steps) if steps else 'none'} (a trial "
            "keeps its newest two, one every training.checkpoint_every steps, in the data home it ran with)",
        )
    return CheckpointSource(trial_id, ref.step, run_dir / f"{PREFIX_CHECKPOINT_DIR}-{ref.step}")
