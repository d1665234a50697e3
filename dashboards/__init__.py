"""Study reports: MLflow runs -> statistics -> plots, HTML, CSV and JSON (reads, never trains)."""

from krpo_bench.dashboards.report import Report, build_report, render_html, summarize
from krpo_bench.dashboards.source import RunData, StudyData, load_study

__all__ = ["Report", "RunData", "StudyData", "build_report", "load_study", "render_html", "summarize"]
