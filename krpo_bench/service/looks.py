"""Sequential looks of an ablation (``analysis.until_decided``): analyse a finished batch of seeds,
store the look, queue the seeds it asks for or close the study."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from krpo_bench.analysis.records import RECORD_CONFIG_KEYS, records_from_jobs
from krpo_bench.service.db import ACTIVE_JOB_STATUSES, StudyKind
from krpo_bench.service.kinds import stored_spec
from krpo_bench.service.queue import JobInfo
from krpo_bench.spec.study import StudySpec

if TYPE_CHECKING:
    from krpo_bench.service.studies import StudyService


class SequentialLooks:
    """The looks of the sequential ablations of one :class:`StudyService`."""

    def __init__(self, service: StudyService) -> None:
        self.service = service

    def take_look(self, study_id: str) -> dict[str, Any] | None:
        """A sequential ablation (``analysis.until_decided``) whose batch of seeds has ended (none of
        its jobs active): analyse the family at this look (krpo_bench.analysis.looks), store the look,
        and queue the next seeds of the comparisons still open, or close the study when none is.
        Idempotent and safe to repeat (under the study lock; the seeds a stored look asked for are
        queued again if a crash lost them). Returns the look taken, else None."""
        if self.service._row(study_id).kind != StudyKind.ABLATION:
            return None
        from krpo_bench.analysis.analyze import AnalysisSettings, analyze  # scipy: not at a worker's start
        from krpo_bench.analysis.looks import decide, seeds_asked

        with self.service._study_lock(study_id):
            row = self.service._row(study_id)
            study = stored_spec(row.spec)
            if study.analysis.until_decided is None or row.cancel_requested:
                return None
            jobs = self.service.queue.list_jobs(study_id, config_keys=RECORD_CONFIG_KEYS)
            if any(job.status in ACTIVE_JOB_STATUSES for job in jobs):
                return None
            looks, sizes = list(row.looks or []), study.look_sizes()
            asked = seeds_asked(looks[-1], sizes) if looks else {}
            if asked and self.queue_seeds(study_id, study, asked, jobs):
                return None
            if looks and (not asked or len(looks) >= len(sizes)):
                if row.total_jobs != row.enqueued_jobs:
                    self.service.rows.close(study_id, looks)
                return None
            look = decide(
                analyze(records_from_jobs(jobs), AnalysisSettings.of_spec(study, looks=looks, next_look=True)),
                looks,
                sizes,
            )
            looks.append(look)
            asked = seeds_asked(look, sizes)
            if not asked:
                self.service.rows.close(study_id, looks)
                return look
            self.service.rows.update(study_id, {"looks": looks})
            self.queue_seeds(study_id, study, asked, jobs)
            return look

    def queue_seeds(self, study_id: str, study: StudySpec, asked: dict[str, int], jobs: list[JobInfo]) -> bool:
        """Queue the trials a look asked for (each label's first ``asked[label]`` seeds of the
        sequential order) that the study does not hold yet; whether any was missing."""
        held = {(job.config["variant"], job.config["seed"]) for job in jobs}
        seeds_of = {
            label: [seed for seed in study.seeds_through(n) if (label, seed) not in held] for label, n in asked.items()
        }
        missing = {label: seeds for label, seeds in seeds_of.items() if seeds}
        if missing:
            self.service._enqueue_planned(study_id, study, study.plan(missing))
        return bool(missing)
