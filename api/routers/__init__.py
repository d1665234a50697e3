"""HTTP routes; each translates a request into one study-service call and its answer back."""

from __future__ import annotations

import contextvars
import math
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from krpo_bench.api.schemas import ErrorResponse

from krpo_bench.service.studies import StudyService
from krpo_bench.spec.names import unshowable

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
"""The current request's id (set by the app's ``RequestGuard``; echoed in ``X-Request-ID``)."""
_CODES = {413: "body_too_large", 500: "internal_error"}


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats and unknown objects become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _plain(jsonable_encoder(value, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}))


def error_response(
    status: int,
    message: str,
    errors: list[dict[str, Any]] | None = None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An ``ErrorResponse`` answer carrying the current request id."""
    body = {
        "error": code or _CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_"),
        "message": message,
        "request_id": request_id.get(),
        "errors": _plain(errors or []),
    }
    return JSONResponse(body, status_code=status, headers=headers)


def path_ref(value: str, what: str) -> str:
    """``value``, a path parameter naming a ``what`` (study id, prefix or name; job id); 404 when it
    holds a character no id or name can hold (NUL or another one the display-name rule refuses), before
    any database sees it: PostgreSQL cannot even compare text holding NUL."""
    if any(unshowable(c) for c in value):
        raise HTTPException(404, f"no {what} {value!r}")
    return value


async def get_service(request: Request) -> StudyService:
    """The app's study service (a FastAPI dependency)."""
    return request.app.state.service


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers: JSON ``ErrorResponse`` whatever the route's own media type
    (``create_app`` adds the model to the schema's components)."""
    text = {
        400: "malformed request body",
        401: "no valid bearer token",
        403: "the token lacks the scope (on a server without tokens: the Host is no loopback name)",
        404: "no such resource",
        409: "the study's state does not allow this, or the study reference names several studies",
        413: "request body too large",
        415: "unsupported content type",
        422: "invalid request or spec (every problem listed)",
        429: "the token's quota would be exceeded (the message names the setting)",
        503: "not ready",
    }
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}}}
    return {s: {"description": text[s], "content": content} for s in statuses}


AUTH_ERRORS = errors(401, 403)
