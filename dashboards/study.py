"""Reports of a study stored by the krpo-bench service (its MLflow runs and, for searches, Optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from krpo_bench.dashboards.report import Report, build_report, render_html
from krpo_bench.dashboards.source import load_study
from krpo_bench.settings import data_home
from krpo_bench.spec.study import StudySpec
from krpo_bench.stats import default_reference


def _optuna_study(service: Any, info: Any) -> optuna.Study | None:
    if info.kind != "search" or not info.optuna_study_name:
        return None
    from krpo_bench.service.optuna_store import optuna_storage

    return optuna.load_study(study_name=info.optuna_study_name, storage=optuna_storage(service.db_url))


def _reference(info: Any) -> str:
    return default_reference(list((info.spec.get("variants") or {}).keys())) or "grpo"


def _target_effect(info: Any) -> float:
    return StudySpec.model_validate(info.spec).analysis.target_effect


def report_study(service: Any, study_id: str, out_dir: Path | None = None) -> Path:
    """Write the study's report (HTML, PNG, CSV, JSON) and return the HTML file's path."""
    info = service.get(study_id)
    out = Path(out_dir or data_home() / "reports" / study_id)
    data = load_study(service.mlflow_uri, study_id=study_id)
    report: Report = build_report(data, out, reference=_reference(info), optuna_study=_optuna_study(service, info),
                                  target_effect=_target_effect(info))
    return report.html_path


def study_dashboard_html(service: Any, study_id: str, refresh_seconds: int | None = 15) -> str:
    """The live dashboard page of a study (refreshes itself while the study runs)."""
    info = service.get(study_id)
    data = load_study(service.mlflow_uri, study_id=study_id)
    running = info.status in ("running", "pending")
    return render_html(
        data,
        reference=_reference(info),
        optuna_study=_optuna_study(service, info),
        refresh_seconds=refresh_seconds if running else None,
        target_effect=_target_effect(info),
    )
