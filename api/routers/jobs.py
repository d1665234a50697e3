"""One job: its attempts, errors and MLflow run."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from krpo_bench.api.auth import require
from krpo_bench.api.routers import AUTH_ERRORS, errors, get_service, path_ref
from krpo_bench.api.schemas import JobDetail

from krpo_bench.service.studies import StudyService

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=AUTH_ERRORS, dependencies=[Depends(require("read"))])


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=errors(404, 422), summary="Get a job (scope: read)")
def get_job(
    request: Request, job_id: str = Path(max_length=64), service: StudyService = Depends(get_service)
) -> JobDetail:
    job = service.job(path_ref(job_id, "job"))
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    ui = request.app.state.settings.mlflow_ui_url
    url = None
    if ui and job.mlflow_run_id:
        experiment = service.get(job.study_id).mlflow_experiment_id
        url = f"{ui}/#/experiments/{experiment}/runs/{job.mlflow_run_id}"
    return JobDetail.build(job, service.attempts(job_id), url)
