"""A study's live HTML report: curves, final table, cost and diagnostics (``dashboards.study``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from krpo_bench.api.auth import require
from krpo_bench.api.routers import AUTH_ERRORS, errors
from krpo_bench.api.routers.studies import Service, StudyId
from krpo_bench.dashboards.study import study_dashboard_html

REFRESH_SECONDS = 15
"""How often the page reloads itself while the study is pending or running (never once it ended)."""

router = APIRouter(tags=["dashboard"], responses=AUTH_ERRORS, dependencies=[Depends(require("read"))])


@router.get(
    "/studies/{study_id}/dashboard",
    response_class=HTMLResponse,
    responses={200: {"description": "the study's report (one self-contained HTML page)"}, **errors(404, 409, 422)},
    summary="A study's report page (scope: read)",
    description="Curves, final-accuracy table with confidence intervals, cost and KRPO diagnostics of the "
    f"finished trials, read from MLflow. Reloads itself every {REFRESH_SECONDS} s while the study runs.",
)
def study_dashboard(study_id: StudyId, service: Service) -> HTMLResponse:
    # a plain `def`: FastAPI runs it in its thread pool, so the MLflow reads never block the event loop
    return HTMLResponse(study_dashboard_html(service, study_id, refresh_seconds=REFRESH_SECONDS))
