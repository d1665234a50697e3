"""Reports of a study stored by the krpo-bench service (its MLflow runs and, for searches, Optuna)."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

import optuna
from krpo_bench.dashboards.report import Report, build_report, render_html
from krpo_bench.dashboards.source import load_study

from krpo_bench.analysis.analyze import AnalysisSettings
from krpo_bench.probe.result import ProbeResult
from krpo_bench.probe.spec import ProbeSpec
from krpo_bench.service.db import FINISHED_STUDY_STATUSES
from krpo_bench.service.kinds import handler
from krpo_bench.settings import data_home
from krpo_bench.spec.study import StudySpec


def _optuna_study(service: Any, info: Any) -> optuna.Study | None:
    if not handler(info.kind).scheduled or not info.optuna_study_name:
        return None
    from krpo_bench.service.optuna_store import optuna_storage

    return optuna.load_study(study_name=info.optuna_study_name, storage=optuna_storage(service.db_url))


def _settings(info: Any) -> AnalysisSettings:
    """The study's analysis settings: its spec's (reference, endpoint, margin, sequential design) and
    the looks it has taken."""
    return AnalysisSettings.of_spec(StudySpec.model_validate(info.spec), looks=info.looks)


def probe_result(service: Any, study_id: str) -> tuple[ProbeSpec, ProbeResult]:
    """A probe study's spec and result, from its succeeded job; ValueError while it has none."""
    jobs = service.jobs(study_id)
    done = [job for job in jobs if job.status == "succeeded" and job.result]
    if not done:
        status = ", ".join(str(job.status) for job in jobs) or "no job"
        raise ValueError(f"probe study {study_id} has no result yet (its job: {status})")
    return ProbeSpec.model_validate(service.get(study_id).spec), ProbeResult.from_json(done[0].result)


def report_study(service: Any, study_id: str, out_dir: Path | None = None) -> Path:
    """Write the study's report (HTML, PNG, CSV, JSON) and return the HTML file's path; a probe
    study's is the probe report (its table and figure)."""
    info = service.get(study_id)
    out = Path(out_dir or data_home() / "reports" / study_id)
    if not handler(info.kind).analysed:
        from krpo_bench.probe.report import write_report

        spec, result = probe_result(service, study_id)
        return write_report(spec, dataclasses.replace(result, report_dir=str(out)), out)
    data = load_study(service.mlflow_uri, study_id=study_id)
    report: Report = build_report(data, out, _settings(info), optuna_study=_optuna_study(service, info))
    return report.html_path


def study_dashboard_html(service: Any, study_id: str, refresh_seconds: int | None = 15) -> str:
    """The live dashboard page of a study (refreshes itself while the study runs); a probe study's
    is its probe report once its job succeeded."""
    info = service.get(study_id)
    if not handler(info.kind).analysed:
        return _probe_page(service, info, refresh_seconds)
    data = load_study(service.mlflow_uri, study_id=study_id)
    running = info.status not in FINISHED_STUDY_STATUSES
    return render_html(
        data,
        _settings(info),
        optuna_study=_optuna_study(service, info),
        refresh_seconds=refresh_seconds if running else None,
    )


def _probe_page(service: Any, info: Any, refresh_seconds: int | None) -> str:
    from krpo_bench.probe.report import report_html

    try:
        return report_html(*probe_result(service, info.id))
    except ValueError as waiting:
        refresh = (
            f'<meta http-equiv="refresh" content="{refresh_seconds}">'
            if refresh_seconds and info.status == "running"
            else ""
        )
        return (
            f'<!doctype html><html><head><meta charset="utf-8">{refresh}<title>krpo-bench probe · {html.escape(info.name)}'
            f"</title></head><body><h1>Gradient-quality probe: {html.escape(info.name)}</h1>"
            f"<p>{html.escape(str(waiting))}</p></body></html>"
        )
