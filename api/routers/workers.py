"""Registered workers: heartbeats, devices, current jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from krpo_bench.api.auth import require
from krpo_bench.api.routers import AUTH_ERRORS, get_service
from krpo_bench.api.schemas import WorkerList, WorkerOut

from krpo_bench.service.studies import StudyService

router = APIRouter(prefix="/api/v1", tags=["workers"], responses=AUTH_ERRORS, dependencies=[Depends(require("read"))])


@router.get("/workers", response_model=WorkerList, summary="List workers (scope: read)")
def list_workers(service: StudyService = Depends(get_service)) -> WorkerList:
    return WorkerList(items=[WorkerOut.of(w) for w in service.workers()])
