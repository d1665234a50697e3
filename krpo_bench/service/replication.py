"""Replication across studies, read from the jobs table: a confirmation's analysis (alone, pooled
with its original, heterogeneity) and the pooled analysis of several studies' identical configs."""

from __future__ import annotations

from collections.abc import Sequence

from krpo_bench.analysis.analyze import AnalysisSettings, analyze
from krpo_bench.analysis.model import StudyAnalysis
from krpo_bench.analysis.pooling import TRIAL_CONFIG, StudyTrials, pooled_records
from krpo_bench.analysis.records import CONFIG_GRID_POINT, CONFIG_VARIANT_NAME, TrialRecord, records_from_jobs
from krpo_bench.analysis.replication import Replication, replicate
from krpo_bench.service.kinds import handler
from krpo_bench.service.studies import StudyError, StudyService, stored_spec

RECORD_KEYS = ("variant", "seed", CONFIG_VARIANT_NAME, CONFIG_GRID_POINT)
"""The keys of a job's config its trial record reads."""


def confirmed_study(service: StudyService, study_id: str) -> str | None:
    """The id of the study that study ``study_id`` confirms (None: it is no confirmation)."""
    service.get(study_id)
    return service.rows.confirms(study_id)


def _records(service: StudyService, study_id: str) -> list[TrialRecord]:
    return records_from_jobs(service.queue.list_jobs(study_id, config_keys=RECORD_KEYS))


def replication(service: StudyService, study_id: str) -> Replication:
    """The analysis of confirmation ``study_id`` (`replicate`), each study with its own settings;
    StudyError when the study confirms none."""
    original = confirmed_study(service, study_id)
    if original is None:
        raise StudyError(f"study {study_id} is no confirmation; confirm a study with 'krpo-bench confirm'")
    return replicate(
        original,
        _records(service, original),
        _settings(service, original),
        study_id,
        _records(service, study_id),
        _settings(service, study_id),
    )


def _settings(service: StudyService, study_id: str) -> AnalysisSettings:
    return AnalysisSettings.of_spec(stored_spec(service.get(study_id).spec))


def compare(service: StudyService, study_ids: Sequence[str]) -> StudyAnalysis:
    """The analysis of the trials of ``study_ids`` pooled by config (`pooled_records`), with the
    first study's settings; StudyError for a probe."""
    infos = [service.get(study_id) for study_id in study_ids]
    probes = [info.id for info in infos if not handler(info.kind).analysed]
    if probes:
        raise StudyError(f"a probe has no trials to pool: {', '.join(probes)}")
    studies = []
    for info in infos:
        jobs = service.queue.list_jobs(info.id)
        studies.append(StudyTrials(info.id, list(zip(records_from_jobs(jobs), (j.config[TRIAL_CONFIG] for j in jobs)))))
    return analyze(pooled_records(studies), AnalysisSettings.of_spec(stored_spec(infos[0].spec)))
