"""The FastAPI application: ``create_app(settings)`` wires the study service, auth, policy, routes,
error handling (JSON errors with a request id, never a stack trace) and the body-size cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from krpo_bench.api.auth import Authenticator, AuthError, TokenStore
from krpo_bench.api.origin import CrossSiteGuard
from krpo_bench.api.policy import Policy
from krpo_bench.api.routers import dashboard, error_response, health, home, jobs, request_id, studies, workers
from krpo_bench.api.routers.optuna import ReadOnlyOptunaDashboard
from krpo_bench.api.routers.studies import PageCache
from krpo_bench.api.schemas import ErrorResponse
from krpo_bench.api.settings import ApiSettings
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import krpo_bench
from krpo_bench.service.optuna_store import dispose_optuna_storage
from krpo_bench.service.quotas import QuotaGuard, Quotas
from krpo_bench.service.studies import StudyError, StudyNotFound, StudyService
from krpo_bench.settings import settings_view
from krpo_bench.spec.loading import SpecError
from krpo_bench.spec.study import StudySpec

log = logging.getLogger("krpo_bench.api")
SUBMIT_CONCURRENCY = 4
"""Submissions stored at once (each one write transaction of the job database); the rest wait their
turn without holding a thread, so reads stay fast."""
MLFLOW_OUTBOX_IDLE_S = 5.0
"""How often the MLflow outbox is polled when no submission wakes it (also the retry delay after
MLflow failed)."""
MLFLOW_OUTBOX_QUIET_S = 0.5
MLFLOW_OUTBOX_MAX_LAG_S = 10.0
"""A submission wakes the outbox once submissions pause for ``MLFLOW_OUTBOX_QUIET_S``, at most
``MLFLOW_OUTBOX_MAX_LAG_S`` later: a burst of submissions is answered before MLflow work competes
with it for the interpreter (a worker creates the records itself if it needs them sooner)."""
_GOOD_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

DESCRIPTION = """\
Submit, watch and control krpo-bench studies (KRPO vs GRPO and other critic-free baselines).

**Auth.** When the server has tokens (`krpo-bench token create`), every route except the probes and
this schema needs `Authorization: Bearer <token>`; scopes nest `read` < `submit` < `admin`
(`read`: GET routes and `/optuna`; `submit`: submitting studies; `admin`: cancel/resume/extend).
A server without tokens answers anonymous requests and only listens on loopback.

**Cross-site.** A request that changes anything (POST, PUT, PATCH, DELETE) is refused (403
`cross_site_request`) when its `Origin` is not this server's, when `Sec-Fetch-Site` is `cross-site` or
`same-site`, or when its body is a form or plain text: a web page cannot act on the server.

**Errors** are JSON (`ErrorResponse`) with a `request_id` that the server's log shares.
"""


class BodyTooLarge(StarletteHTTPException):
    """The request body exceeds the cap (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class RequestGuard:
    """Middleware around every route and mount: a request id per request (``X-Request-ID``), the
    body-size cap, and the catch-all that logs the traceback server-side and answers a JSON 500
    carrying only the request id."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _GOOD_REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        started = False
        received = 0

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        try:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge as exc:
            if not started:
                await error_response(413, exc.detail)(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s [request_id=%s]", scope["method"], scope["path"], rid)
            if not started:
                await error_response(500, "internal error; quote the request id to the operator")(
                    scope, receive, send_with_id
                )
        finally:
            request_id.reset(token)


ECHO_CHARS = 64
"""Longest request value an error echoes (longer ones are cut, so no error repeats a huge header)."""


def _clipped(value: Any) -> Any:
    """``value``, or for text longer than ``ECHO_CHARS``: its prefix and how long it was."""
    if isinstance(value, (str, bytes)) and len(value) > ECHO_CHARS:
        return f"{value[:ECHO_CHARS]!s}... ({len(value)} characters)"
    return value


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus, in components, the study spec (the submit body) and the error body;
    bearer security is declared only when this server requires tokens."""
    required = app.state.auth.required  # tokens may be created (or all revoked) while serving
    if app.openapi_schema is None or app.state.schema_requires_tokens != required:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        components = schema.setdefault("components", {})
        for model in (StudySpec, ErrorResponse):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.setdefault("schemas", {}).update(model_schema.pop("$defs", {}))
            components["schemas"][model.__name__] = model_schema
        if not required:
            components.pop("securitySchemes", None)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.pop("security", None)
                    operation["responses"].pop("401", None)  # 403 stays: a Host that is not loopback
        app.openapi_schema = schema
        app.state.schema_requires_tokens = required
    return app.openapi_schema


async def drain_mlflow_outbox(service: StudyService, wake: asyncio.Event, stop: asyncio.Event) -> None:
    """Create the MLflow records of submitted studies, one at a time in a worker thread, off the
    request path: woken by submissions (see ``MLFLOW_OUTBOX_QUIET_S``), polling every
    ``MLFLOW_OUTBOX_IDLE_S`` otherwise (so studies left pending by a server that died are picked up
    after a restart). Returns once ``stop`` is set (and ``wake`` with it), after the record in
    progress: a thread cannot be cancelled, so cancelling the task would leave it using the service
    while the server shuts the service down."""
    while not stop.is_set():
        woken = time.monotonic()
        while wake.is_set() and not stop.is_set() and time.monotonic() - woken < MLFLOW_OUTBOX_MAX_LAG_S:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), MLFLOW_OUTBOX_QUIET_S)
        wake.clear()
        failed = False
        try:
            for study_id in await run_in_threadpool(service.pending_mlflow):
                if stop.is_set():
                    break
                try:
                    await run_in_threadpool(service.ensure_mlflow, study_id)
                except Exception:
                    failed = True
                    log.warning(
                        "could not create the MLflow records of study %s (retried later)", study_id, exc_info=True
                    )
        except Exception:
            failed = True
            log.warning("could not read the MLflow outbox (retried later)", exc_info=True)
        if failed or not wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), MLFLOW_OUTBOX_IDLE_S)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The server's background task: the MLflow outbox, stopped after the record in progress; then
    the pooled database connections (the job database's and Optuna's) are closed, once nothing uses them."""
    stop = asyncio.Event()
    task = asyncio.create_task(drain_mlflow_outbox(app.state.service, app.state.mlflow_wake, stop))
    try:
        yield
    finally:
        stop.set()
        app.state.mlflow_wake.set()
        await task
        app.state.service.engine.dispose()
        dispose_optuna_storage(app.state.service.db_url)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or ApiSettings.from_settings()
    app = FastAPI(
        title="krpo-bench",
        version=krpo_bench.__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
    )  # /docs: routers.home, with the assets of the installed package
    app.state.settings = settings
    app.state.service = StudyService(settings.db, settings.mlflow_tracking_uri)
    app.state.auth = Authenticator(TokenStore(settings.api_tokens_file))
    app.state.policy = settings_view(Policy, settings)
    app.state.submit_slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    app.state.quotas = QuotaGuard(app.state.service.rows, settings_view(Quotas, settings))
    app.state.mlflow_wake = asyncio.Event()
    app.state.list_cache = PageCache(settings.list_cache_s)

    for module in (health, studies, jobs, workers, dashboard, home):
        app.include_router(module.router)
    app.mount(home.DOCS_ASSETS_URL, home.docs_assets(), name="docs-assets")
    app.mount("/optuna", ReadOnlyOptunaDashboard(settings.db, app.state.auth))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "path": ".".join(str(p) for p in e["loc"]),
                "value": _clipped(e.get("input")),
                "message": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        return error_response(422, "invalid request", errors)

    @app.exception_handler(SpecError)
    async def _spec(_: Request, exc: SpecError) -> JSONResponse:
        errors = [{**e, "type": e.get("type") or "parse_error"} for e in exc.errors]
        return error_response(
            422, "the study spec is invalid or not allowed on this server", errors, code="invalid_spec"
        )

    @app.exception_handler(StudyNotFound)
    async def _not_found(_: Request, exc: StudyNotFound) -> JSONResponse:
        return error_response(404, f"no study {exc.args[0]!r}")

    @app.exception_handler(StudyError)
    async def _conflict(_: Request, exc: StudyError) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return error_response(exc.status, exc.message, headers=exc.headers)

    app.add_middleware(CrossSiteGuard)  # inside RequestGuard: its 403 carries the request id
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    return app
