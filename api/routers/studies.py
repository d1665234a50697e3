"""Studies: submit (JSON or YAML), list, inspect, control (cancel/resume/extend), results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from krpo_bench.api.auth import TokenRecord, may_control, require
from krpo_bench.api.policy import Policy, admit, stored_cap_errors, trial_cap_errors
from krpo_bench.api.routers import AUTH_ERRORS, errors, get_service, path_ref
from krpo_bench.api.schemas import (
    ConfirmRequest,
    ExtendRequest,
    JobPage,
    JobSummary,
    ReplicationResults,
    StudyDetail,
    StudyPage,
    StudyResults,
    StudySummary,
)
from sqlalchemy.exc import IntegrityError

from krpo_bench.probe.spec import ProbeSpec
from krpo_bench.service.db import JobStatus, StudyKind, StudyStatus
from krpo_bench.service.quotas import QuotaExceeded, QuotaGuard, owner_of, with_default_timeout
from krpo_bench.service.replication import replication
from krpo_bench.service.studies import StudyInfo, StudyService
from krpo_bench.service.study_state import live_workers_of
from krpo_bench.spec.loading import SpecError, parse_yaml
from krpo_bench.spec.study import StudySpec

router = APIRouter(prefix="/api/v1", tags=["studies"], responses=AUTH_ERRORS)

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
MAX_IDEMPOTENCY_KEY = 200  # stored with the token id it is scoped to (a 255-character column)
Service = Annotated[StudyService, Depends(get_service)]


def _study_id(
    study_id: Annotated[
        str, Path(max_length=200, description="study id, a unique prefix of it, or a unique study name")
    ],
    service: Service,
) -> str:
    """The id the path names (404 when none, 409 listing the candidates when several)."""
    return service.resolve(path_ref(study_id, "study"))


StudyId = Annotated[str, Depends(_study_id)]
Submitter = Annotated[TokenRecord | None, Depends(require("submit"))]


def _controlled(token: Submitter, study_id: StudyId, service: Service) -> str:
    """The study the path names, if the token may cancel, resume or extend it: its own study, or
    any with an admin token (403 otherwise)."""
    if not may_control(token, owner_of(service.rows, study_id)):
        raise HTTPException(
            403,
            "this study was submitted by another token: a submit token may cancel, resume or extend "
            "only the studies it submitted (an admin token may control any)",
        )
    return study_id


ControlledId = Annotated[str, Depends(_controlled)]


def _quota_owner(token: TokenRecord | None) -> str | None:
    """Whose quota a request's new trials count against: the token's, unless it is an admin's (or
    there is none: a server without tokens)."""
    return None if token is None or token.grants("admin") else token.id


def _too_many(exc: QuotaExceeded) -> HTTPException:
    return HTTPException(429, str(exc))


EXAMPLE_SPEC = {
    "name": "krpo-vs-grpo",
    "kind": "ablation",
    "seeds": 2,
    "base": {
        "model": {"name": "tiny-arith"},
        "task": {
            "kind": "arithmetic",
            "num_terms": [2, 2],
            "num_digits": [1, 2],
            "operators": ["+"],
            "rewards": [{"name": "exact"}],
        },
        "training": {"max_steps": 100},
    },
    "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
}
_SPEC_BODY = {"schema": {"$ref": "#/components/schemas/StudySpec"}, "example": EXAMPLE_SPEC}
SUBMIT_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "a study spec (see `krpo-bench schema study`), as JSON or YAML",
        "content": {"application/json": _SPEC_BODY, "application/yaml": _SPEC_BODY},
    }
}


class PageCache:
    """Rendered list pages, reused for ``ttl`` seconds (so the list's counts may lag the workers by
    that much; writes through the API clear it). Concurrent misses of one page share one computation,
    which runs on even if the request that started it goes away."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._generation = 0
        self._pages: dict[Hashable, tuple[float, bytes]] = {}
        self._pending: dict[Hashable, asyncio.Future[bytes]] = {}

    async def get(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        hit = self._pages.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        if key not in self._pending:
            self._pending[key] = asyncio.ensure_future(self._fill(key, compute, self._generation))
        return await asyncio.shield(self._pending[key])

    async def _fill(self, key: Hashable, compute: Callable[[], bytes], generation: int) -> bytes:
        started = time.monotonic()
        try:
            page = await run_in_threadpool(compute)
        finally:
            if generation == self._generation:  # else: cleared meanwhile, the page may predate a write
                del self._pending[key]
        if generation == self._generation:
            self._pages = {k: v for k, v in self._pages.items() if v[0] > started}
            self._pages[key] = (started + self.ttl, page)
        return page

    def clear(self) -> None:
        self._generation += 1
        self._pages.clear()
        self._pending.clear()


def _parse(body: bytes, content_type: str) -> Any:
    """The request body as data; a malformed body raises SpecError (422)."""
    media = content_type.split(";")[0].strip().lower()
    if media in YAML_TYPES:
        try:
            return parse_yaml(body, "<request>")
        except RecursionError:
            raise SpecError(
                "<request>", [{"path": "", "value": None, "message": "spec nested too deeply", "type": "yaml_invalid"}]
            ) from None
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            415, f"send the spec as application/json or application/yaml, not {media or 'no content type'}"
        )
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise SpecError(
            "<request>", [{"path": "", "value": None, "message": f"invalid JSON: {exc}", "type": "json_invalid"}]
        ) from None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _admit(body: bytes, content_type: str, policy: Policy, service: StudyService) -> StudySpec | ProbeSpec:
    return admit(_parse(body, content_type), policy, checkpoint_trial=service.checkpoint_trial)


def _submit(
    service: StudyService, study: StudySpec | ProbeSpec, key: str | None, token: TokenRecord | None, quotas: QuotaGuard
) -> StudyDetail:
    """Submit once per ``key`` (already scoped to the caller), owned by ``token``, within its quotas."""
    owner = token.id if token else None
    try:
        with quotas.admit(_quota_owner(token), study.trial_count(), study.resources.timeout_s, key):
            info = service.submit(study, idempotency_key=key, owner=owner)
    except IntegrityError:
        if key is None:
            raise
        info = service.submit(
            study, idempotency_key=key, owner=owner
        )  # a concurrent request with this key won: its study
    except QuotaExceeded as exc:
        raise _too_many(exc) from None
    if key and info.spec != study.model_dump(mode="json"):
        raise HTTPException(409, "this Idempotency-Key was used for a different spec")
    return _detail(service, info.id, info, study)


def _detail(
    service: StudyService, study_id: str, info: StudyInfo | None = None, spec: StudySpec | ProbeSpec | None = None
) -> StudyDetail:
    """The study's detail, read in one transaction; ``info``: its summary and ``spec``: its validated
    spec, when the caller has just stored or read them."""
    return StudyDetail.build(service.view(study_id, info, spec))


@router.post(
    "/studies",
    status_code=201,
    response_model=StudyDetail,
    summary="Submit a study (scope: submit)",
    description="Validates the spec and the server's policy (remote code, data roots, trial and model-size caps, "
    "priority above 0 only with an admin token), stores the study and queues its trials (a `kind: probe` spec: one "
    "job, the gradient-quality probe), owned by the token. A submit token's studies together hold at most "
    "`KRPO_BENCH_MAX_ACTIVE_TRIALS_PER_TOKEN` queued or running trials and `KRPO_BENCH_MAX_TRIAL_HOURS_PER_TOKEN` "
    "trial-hours (trials x timeout; a spec without `resources.timeout_s` gets `KRPO_BENCH_DEFAULT_TIMEOUT_S`): 429 "
    "above. With `Idempotency-Key` "
    "(at most 200 characters), repeating the request with the same token returns the same study.",
    openapi_extra=SUBMIT_OPENAPI,
    responses={
        201: {
            "description": "the new (or, for a repeated Idempotency-Key, the earlier) study",
            "headers": {"Location": {"description": "URL of the study", "schema": {"type": "string"}}},
        },
        **errors(409, 413, 415, 422, 429),
    },
)
async def submit_study(
    request: Request,
    response: Response,
    service: Service,
    token: Annotated[TokenRecord | None, Depends(require("submit"))],
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, description="makes retries safe (per token)")
    ] = None,
) -> StudyDetail:
    body = await request.body()
    async with request.app.state.submit_slots:  # parsing and validating take the slots storing takes
        study = await run_in_threadpool(
            _admit, body, request.headers.get("content-type", ""), request.app.state.policy, service
        )
    study = with_default_timeout(study, request.app.state.settings.default_timeout_s)
    if study.priority > 0 and token is not None and not token.grants("admin"):
        raise HTTPException(
            403, f"priority: only admin tokens may set a priority above the default (0); got {study.priority}"
        )
    key = f"{token.id if token else 'anonymous'}:{idempotency_key}" if idempotency_key else None
    async with request.app.state.submit_slots:
        detail = await run_in_threadpool(_submit, service, study, key, token, request.app.state.quotas)
    request.app.state.mlflow_wake.set()  # its MLflow records follow in the background
    request.app.state.list_cache.clear()
    response.headers["Location"] = f"/api/v1/studies/{detail.id}"
    return detail


@router.get(
    "/studies",
    response_model=StudyPage,
    responses=errors(422),
    summary="List studies, newest first (scope: read)",
    description="Pages are cached for `KRPO_BENCH_LIST_CACHE_S` seconds (default 1): counts may lag that much.",
    dependencies=[Depends(require("read"))],
)
async def list_studies(
    request: Request,
    service: Service,
    status: StudyStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Response:
    def page() -> bytes:
        infos = service.list(status=status.value if status else None, limit=limit + 1, offset=offset)
        workers = live_workers_of(service)
        return (
            StudyPage(
                items=[StudySummary.of(i, workers) for i in infos[:limit]],
                limit=limit,
                offset=offset,
                next_offset=offset + limit if len(infos) > limit else None,
            )
            .model_dump_json()
            .encode()
        )

    body = await request.app.state.list_cache.get((status, limit, offset), page)
    return Response(body, media_type="application/json")


@router.get(
    "/studies/{study_id}",
    response_model=StudyDetail,
    responses=errors(404, 409, 422),
    summary="Get a study: progress, best trial, per-variant summary (scope: read)",
    dependencies=[Depends(require("read"))],
)
def get_study(study_id: StudyId, service: Service) -> StudyDetail:
    return _detail(service, study_id)


@router.get(
    "/studies/{study_id}/jobs",
    response_model=JobPage,
    responses=errors(404, 409, 422),
    summary="List a study's jobs (scope: read)",
    dependencies=[Depends(require("read"))],
)
def list_jobs(
    study_id: StudyId,
    service: Service,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobPage:
    counts = service.get(study_id).counts
    total = counts.get(status.value, 0) if status else sum(counts.values())
    jobs = service.jobs(study_id, statuses=[status] if status else None, limit=limit, offset=offset)
    return JobPage(
        items=[JobSummary.of(j) for j in jobs],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=offset + limit if offset + limit < total else None,
    )


@router.get(
    "/studies/{study_id}/results",
    response_model=StudyResults,
    responses=errors(404, 409, 422),
    summary="Final accuracy statistics per variant (scope: read)",
    dependencies=[Depends(require("read"))],
)
def study_results(study_id: StudyId, service: Service) -> StudyResults:
    return StudyResults.of(study_id, service.results(study_id))


@router.post(
    "/studies/{study_id}/cancel",
    response_model=StudySummary,
    responses=errors(404, 409, 422),
    summary="Cancel: queued trials now, running ones within a heartbeat (scope: submit, own studies; admin: any)",
)
async def cancel_study(study_id: ControlledId, request: Request, service: Service) -> StudySummary:
    info = await run_in_threadpool(service.cancel, study_id)
    request.app.state.list_cache.clear()  # on the event loop, like every use of the cache
    return StudySummary.of(info, await run_in_threadpool(live_workers_of, service))


@router.post(
    "/studies/{study_id}/resume",
    response_model=StudySummary,
    responses=errors(404, 409, 422, 429),
    summary="Resume an interrupted or cancelled study; finished trials are kept (scope: submit, own studies "
    "within the token's quotas; admin: any)",
)
async def resume_study(study_id: ControlledId, request: Request, service: Service, token: Submitter) -> StudySummary:
    info = await run_in_threadpool(_resume, service, study_id, _quota_owner(token), request.app.state.quotas)
    request.app.state.list_cache.clear()
    return StudySummary.of(info, await run_in_threadpool(live_workers_of, service))


@router.post(
    "/studies/{study_id}/extend",
    response_model=StudySummary,
    responses=errors(400, 404, 409, 422, 429),
    summary="Add trials to a search's budget (scope: submit, own studies within the token's quotas; admin: any)",
)
async def extend_study(
    study_id: ControlledId, body: ExtendRequest, request: Request, service: Service, token: Submitter
) -> StudySummary:
    info = await run_in_threadpool(
        _extend,
        service,
        study_id,
        body.n_trials,
        request.app.state.policy,
        _quota_owner(token),
        request.app.state.quotas,
    )
    request.app.state.list_cache.clear()
    return StudySummary.of(info, await run_in_threadpool(live_workers_of, service))


def _extend(
    service: StudyService, study_id: str, n_trials: int, policy: Policy, owner: str | None, quotas: QuotaGuard
) -> StudyInfo:
    info = service.get(study_id)
    if info.kind != StudyKind.SEARCH:
        return service.extend(study_id, n_trials)  # refused with the reason
    spec = StudySpec.model_validate(info.spec)
    per_trial = spec.seeds_per_trial
    extended = spec.model_copy(update={"n_trials": (spec.n_trials or 0) + n_trials})
    cap = trial_cap_errors(info.total + n_trials * per_trial, policy, "n_trials") or stored_cap_errors(
        extended, policy, "n_trials"
    )
    if cap:
        raise SpecError("<request>", cap)
    try:
        with quotas.admit(owner, n_trials * per_trial, spec.resources.timeout_s):
            return service.extend(study_id, n_trials)
    except QuotaExceeded as exc:
        raise _too_many(exc) from None


@router.post(
    "/studies/{study_id}/confirm",
    status_code=201,
    response_model=StudyDetail,
    summary="Confirm an ablation on fresh seeds: a linked study (scope: submit)",
    description="Submits a study that re-runs the chosen variants (default: all) and the reference of the ablation at "
    "the same grid on seeds none of its trials, nor an earlier confirmation's, used; its `confirms` is the original. "
    "Checked as a submission is (the server's policy, admin-only priorities, the token's quotas: 429 above); owned by "
    "the token. `GET .../replication` of the new study analyses it alone, pooled with the original, and their "
    "heterogeneity.",
    responses={
        201: {
            "description": "the confirmation",
            "headers": {"Location": {"description": "URL of the study", "schema": {"type": "string"}}},
        },
        **errors(400, 404, 409, 422, 429),
    },
)
async def confirm_study(
    study_id: StudyId, body: ConfirmRequest, request: Request, response: Response, service: Service, token: Submitter
) -> StudyDetail:
    async with request.app.state.submit_slots:
        detail = await run_in_threadpool(
            _confirm, service, study_id, body, token, request.app.state.policy, request.app.state.quotas
        )
    request.app.state.mlflow_wake.set()
    request.app.state.list_cache.clear()
    response.headers["Location"] = f"/api/v1/studies/{detail.id}"
    return detail


def _confirm(
    service: StudyService,
    study_id: str,
    body: ConfirmRequest,
    token: TokenRecord | None,
    policy: Policy,
    quotas: QuotaGuard,
) -> StudyDetail:
    """Confirm within the checks a submission passes: policy, priority and the token's quotas."""

    @contextlib.contextmanager
    def admitted(spec: StudySpec) -> Iterator[None]:
        admit(spec.model_dump(mode="json"), policy)
        if spec.priority > 0 and token is not None and not token.grants("admin"):
            raise HTTPException(
                403,
                f"priority: only admin tokens may set a priority above the default (0); the "
                f"confirmation keeps the study's {spec.priority}",
            )
        try:
            with quotas.admit(_quota_owner(token), spec.trial_count(), spec.resources.timeout_s):
                yield
        except QuotaExceeded as exc:
            raise _too_many(exc) from None

    info = service.confirm(study_id, body.variants, body.seeds, owner=token.id if token else None, admitted=admitted)
    return _detail(service, info.id, info)


@router.get(
    "/studies/{study_id}/replication",
    response_model=ReplicationResults,
    responses=errors(404, 409, 422),
    summary="A confirmation's analysis: alone, pooled with its original, heterogeneity (scope: read)",
    dependencies=[Depends(require("read"))],
)
def study_replication(study_id: StudyId, service: Service) -> ReplicationResults:
    return ReplicationResults.model_validate(replication(service, study_id), from_attributes=True)


def _resume(service: StudyService, study_id: str, owner: str | None, quotas: QuotaGuard) -> StudyInfo:
    """Resume within the owner's quotas: the trials it may queue again are those neither active
    nor finished well."""
    info = service.get(study_id)
    kept = sum(
        info.counts.get(s, 0) for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.PRUNED)
    )
    try:
        with quotas.admit(owner, max(0, info.total - kept), info.spec["resources"]["timeout_s"]):
            return service.resume(study_id)
    except QuotaExceeded as exc:
        raise _too_many(exc) from None
