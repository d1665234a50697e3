"""Property-based run of schemathesis over the API's OpenAPI schema: valid and invalid requests to
every operation; no answer may be a 5xx, and every answer must match the schema (status code,
content type, headers, body)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Schema-violating requests must be refused too, the study body included (the spec models are strict:
# ``priority: false`` or ``"2"`` for a number is an error, as the JSON Schema says).
STRICT = [*CHECKS, negative_data_rejection]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    home = tmp_path_factory.mktemp("schemathesis")
    settings = ApiSettings(
        db=f"sqlite:///{home / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        api_tokens_file=home / "tokens.json",
        data_roots=(home,),
        max_trials=50,
    )
    yield create_app(settings)


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def sent() -> Iterator[list[str]]:
    """The operations the test using it called, one entry a request; once it is done, the run must
    have been large enough: a few hundred requests, every one of the 15 operations."""
    calls: list[str] = []
    yield calls
    print(f"schemathesis sent {len(calls)} requests")
    assert len(calls) >= 300, len(calls)
    assert len(set(calls)) == 15, sorted(set(calls))


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_operation_conforms(case: schemathesis.Case, sent: list[str]) -> None:
    sent.append(case.operation.label)
    case.call_and_validate(
        checks=STRICT, headers={**(case.headers or {}), "Host": "localhost"}
    )  # a token-less server answers loopback names only
