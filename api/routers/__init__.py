"""HTTP routes; each translates a request into one study-service call and its answer back."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from api.schemas import ErrorResponse
from krpo_bench.service.studies import StudyService


async def get_service(request: Request) -> StudyService:
    """The app's study service (a FastAPI dependency)."""
    return request.app.state.service


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers: JSON ``ErrorResponse`` whatever the route's own media type
    (``create_app`` adds the model to the schema's components)."""
    text = {
        400: "malformed request body", 401: "no valid bearer token", 403: "the token lacks the scope", 404: "no such resource",
        409: "the study's state does not allow this", 413: "request body too large",
        415: "unsupported content type", 422: "invalid request or spec (every problem listed)",
        503: "not ready",
    }
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorResponse.__name__}"}}}
    return {s: {"description": text[s], "content": content} for s in statuses}


AUTH_ERRORS = errors(401, 403)
