"""Study kinds as one protocol: each kind (ablation, search, probe) is one :class:`StudyKindHandler`,
registered by :class:`StudyKind` in :data:`KINDS`. Callers dispatch through :func:`handler` instead
of comparing kind strings: validating a submission, planning its jobs, running a job in the trial
child process, and whether its results are analysed per variant or are its one job's.

Adding a kind: one handler class and one row of :data:`KINDS` (its spec model and, where it runs
something other than a trial, its job runner).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from krpo_bench import tags as krpo_tags
from krpo_bench.analysis.model import GridPoint
from krpo_bench.analysis.records import CONFIG_GRID_POINT, CONFIG_VARIANT_NAME
from krpo_bench.models.memory import WHOLE_DEVICE_MIB
from krpo_bench.probe.spec import ProbeSpec, validate_probe
from krpo_bench.service.db import StudyKind
from krpo_bench.service.queue import NewJob
from krpo_bench.spec.kind import kind_of
from krpo_bench.spec.study import StudySpec, validate_study

if TYPE_CHECKING:
    from krpo_bench.service.studies import StudyService

AnyStudy = StudySpec | ProbeSpec
PROBE_KEY = "probe"
"""The trial key (and variant) of a probe study's one job."""


def trial_tags(
    study_id: str, study: AnyStudy, key: str, label: str, seed: int, variant: str, grid_point: GridPoint
) -> dict[str, str]:
    """A trial run's MLflow tags: its study, key, display label (``krpo.variant``), seed, and its variant
    name and grid point as data (``krpo.variant_name``; ``krpo.grid_point``: JSON (path, value) pairs)."""
    return {
        krpo_tags.STUDY_ID: study_id,
        krpo_tags.STUDY_NAME: study.name,
        krpo_tags.KIND: study.kind,
        krpo_tags.TRIAL_KEY: key,
        krpo_tags.VARIANT: label,
        krpo_tags.VARIANT_NAME: variant,
        krpo_tags.GRID_POINT: json.dumps([list(pair) for pair in grid_point]),
        krpo_tags.SEED: str(seed),
    }


class StudyKindHandler(ABC):
    """One study kind: how a submission validates, which jobs it plans, how the child runs a job."""

    kind: ClassVar[StudyKind]
    job_config_key: ClassVar[str] = "trial"
    """The key of a job's config that holds what the trial child process runs."""
    analysed: ClassVar[bool] = True
    """Whether its results are its trials' metrics analysed per variant (else its one job's result)."""
    scheduled: ClassVar[bool] = False
    """Whether its trials are asked of Optuna while it runs (none is planned at submission)."""

    @abstractmethod
    def validate(self, data: Any, source: str) -> AnyStudy:
        """The kind's spec from submitted data; SpecError naming every problem."""

    @abstractmethod
    def stored(self, spec: dict[str, Any]) -> AnyStudy:
        """The kind's spec from a stored study's (validated at submission)."""

    @abstractmethod
    def plan(self, service: StudyService, study_id: str, study: Any, experiment: str) -> list[NewJob]:
        """The jobs queued with the study at submission."""

    @abstractmethod
    def describe(self, study: Any) -> str:
        """One line naming the study and its size (``krpo-bench validate``)."""

    def run_job(self, job: Any, service: Any, payload: dict[str, Any], should_stop: Callable[[], bool]) -> int:
        """Run a job other than a trial in the trial child process; the exit code. Trials (the
        default ``job_config_key``) are run by the child itself."""
        raise NotImplementedError(f"{self.kind} jobs are trials, run by the trial child process")


class _StudySpecKind(StudyKindHandler):
    """The kinds of :class:`StudySpec` (a matrix of trials)."""

    def validate(self, data: Any, source: str) -> StudySpec:
        return validate_study(data, source)

    def stored(self, spec: dict[str, Any]) -> StudySpec:
        return StudySpec.model_validate(spec)

    def describe(self, study: StudySpec) -> str:
        return f"{study.kind} study {study.name!r}: {study.trial_count()} trials"


class AblationKind(_StudySpecKind):
    """Variants x grid x seeds, planned up front."""

    kind = StudyKind.ABLATION

    def plan(self, service: StudyService, study_id: str, study: StudySpec, experiment: str) -> list[NewJob]:
        return [
            service.trial_job(
                study_id, study, p.key, p.label, p.seed, p.spec, experiment, None, p.variant, p.grid_point
            )
            for p in study.plan()
        ]


class SearchKind(_StudySpecKind):
    """Optuna asks for trials while the budget lasts; none is planned at submission."""

    kind = StudyKind.SEARCH
    scheduled = True

    def plan(self, service: StudyService, study_id: str, study: StudySpec, experiment: str) -> list[NewJob]:
        return []


class ProbeKind(StudyKindHandler):
    """A gradient-quality probe: one job that runs the probe in place of a trial."""

    kind = StudyKind.PROBE
    job_config_key = "probe"
    analysed = False

    def validate(self, data: Any, source: str) -> ProbeSpec:
        return validate_probe(data, source)

    def stored(self, spec: dict[str, Any]) -> ProbeSpec:
        return ProbeSpec.model_validate(spec)

    def describe(self, study: ProbeSpec) -> str:
        return (
            f"probe {study.name!r}: {len(study.estimators)} estimators x "
            f"{len(study.group_sizes)} group sizes x {study.batches} batches"
        )

    def plan(self, service: StudyService, study_id: str, study: ProbeSpec, experiment: str) -> list[NewJob]:
        """The probe, logging under the study's experiment. Its memory is not estimated (one
        parameter-sized gradient sum per table row), so it takes a GPU alone."""
        return [
            NewJob(
                trial_key=PROBE_KEY,
                config={
                    self.job_config_key: study.model_dump(mode="json") | {"experiment": experiment},
                    "variant": PROBE_KEY,
                    CONFIG_VARIANT_NAME: PROBE_KEY,
                    CONFIG_GRID_POINT: [],
                    "seed": study.seed,
                    "tags": trial_tags(study_id, study, PROBE_KEY, PROBE_KEY, study.seed, PROBE_KEY, ()),
                    "optuna_study_name": None,
                    "report_intermediate": False,
                },
                priority=study.priority,
                max_attempts=study.resources.max_attempts,
                timeout_s=study.resources.timeout_s,
                gpus=1,
                gpu_memory_mib=WHOLE_DEVICE_MIB,
            )
        ]

    def run_job(self, job: Any, service: Any, payload: dict[str, Any], should_stop: Callable[[], bool]) -> int:
        from krpo_bench.service.probe_job import run_probe_job

        return run_probe_job(job, service, payload, should_stop)


KINDS: dict[StudyKind, StudyKindHandler] = {
    StudyKind.ABLATION: AblationKind(),
    StudyKind.SEARCH: SearchKind(),
    StudyKind.PROBE: ProbeKind(),
}
"""Every study kind's handler, by kind."""


def handler(kind: str) -> StudyKindHandler:
    """The handler of a stored or validated study's kind."""
    return KINDS[StudyKind(kind)]


def submitted_handler(data: Any) -> StudyKindHandler:
    """The handler that validates submitted data: its declared kind's; a study model's for a
    missing or unknown kind (whose validation then names the problem)."""
    return KINDS.get(kind_of(data), KINDS[StudyKind.ABLATION])


def job_handler(config: dict[str, Any]) -> StudyKindHandler | None:
    """The handler whose non-trial job this config holds, or None for a trial."""
    return next((h for h in KINDS.values() if h.job_config_key != "trial" and h.job_config_key in config), None)


def validate_submission(data: Any, source: str = "<study>") -> AnyStudy:
    """A submitted study of any kind (a probe: one job; an ablation or a search); SpecError otherwise."""
    return submitted_handler(data).validate(data, source)


def stored_spec(spec: dict[str, Any]) -> AnyStudy:
    """A stored study's spec (validated when it was submitted)."""
    return submitted_handler(spec).stored(spec)
