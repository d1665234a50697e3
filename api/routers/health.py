"""Liveness and readiness probes (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from krpo_bench.api.routers import errors, get_service
from krpo_bench.api.schemas import Health, Ready
from sqlalchemy.exc import SQLAlchemyError

from krpo_bench.service.studies import StudyService

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Ready, responses=errors(503), summary="Readiness: the job database answers")
def readyz(service: StudyService = Depends(get_service)) -> Ready:
    try:
        service.list(limit=1)
    except SQLAlchemyError:
        raise HTTPException(503, "the job database is unreachable") from None
    return Ready()
