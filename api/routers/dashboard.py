"""A study's HTML report (the dashboards work plugs in here; until then every study has none)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse

from api.auth import require
from api.routers import AUTH_ERRORS, errors
from api.routers.studies import Service, StudyId

router = APIRouter(tags=["dashboard"], responses=AUTH_ERRORS, dependencies=[Depends(require("read"))])


@router.get(
    "/studies/{study_id}/dashboard",
    response_class=HTMLResponse,
    responses={200: {"description": "the study's report"}, **errors(404, 422)},
    summary="A study's report page (scope: read)",
)
def study_dashboard(study_id: StudyId, service: Service) -> HTMLResponse:
    service.get(study_id)
    raise HTTPException(404, "no report yet")
