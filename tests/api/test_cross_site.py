"""Issue 19, item 7: a page on another origin cannot change anything on the server (token-less or
not); the server's own pages and clients that send no Origin (the CLI, scripts) still can."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.auth import TokenStore
from krpo_bench.api.origin import cross_site_refusal, simple_body_refusal
from krpo_bench.api.settings import ApiSettings

from tests.api.test_api import SPEC

SERVER = "http://127.0.0.1:8000"
EVIL = {
    "Origin": "https://evil.example",
    "Sec-Fetch-Site": "cross-site",
    "Content-Type": "application/x-www-form-urlencoded",
}
FOREIGN = [
    EVIL,
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:8001"},  # another port is another origin
    {"Origin": "http://127.0.0.1:8000.evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling host of the same site
    {"Origin": SERVER, "Sec-Fetch-Site": "cross-site"},
]
SIMPLE_BODIES = ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"]


def settings(home: Path) -> ApiSettings:
    return ApiSettings(
        db=f"sqlite:///{home / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        api_tokens_file=home / "tokens.json",
        data_roots=(home / "data",),
        list_cache_s=0,
    )


@pytest.fixture(scope="module")
def tokenless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path_factory.mktemp("cross-site"))), base_url=SERVER) as client:
        yield client


def submitted(client: TestClient, **headers: str) -> dict[str, Any]:
    response = client.post("/api/v1/studies", json=SPEC, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def assert_refused(response: Any, reason: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "cross_site_request" and reason in body["message"] and body["request_id"], body


@pytest.mark.parametrize("headers", FOREIGN, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_state_changing_requests_from_another_site_are_refused(tokenless: TestClient, headers: dict[str, str]) -> None:
    study = submitted(tokenless)
    reason = "Origin" if headers.get("Origin", SERVER) != SERVER else "Sec-Fetch-Site"
    for action in ("cancel", "resume", "extend"):
        assert_refused(
            tokenless.post(f"/api/v1/studies/{study['id']}/{action}", headers=headers, content=b"n_trials=5"), reason
        )
    assert_refused(
        tokenless.post(f"/api/v1/studies/{study['name'][0]}/cancel", headers=headers), reason
    )  # a 1-character prefix
    for method in ("PUT", "PATCH", "DELETE"):
        assert_refused(tokenless.request(method, f"/api/v1/studies/{study['id']}", headers=headers), reason)
    assert_refused(tokenless.post("/api/v1/studies", headers=headers, content=b"name=x"), reason)
    after = tokenless.get(f"/api/v1/studies/{study['id']}", headers=headers)
    assert after.status_code == 200 and after.json()["status"] == "running", "reads stay open; nothing was changed"


def test_form_and_plain_text_bodies_are_refused_even_without_browser_headers(tokenless: TestClient) -> None:
    study = submitted(tokenless)
    for content_type in SIMPLE_BODIES:  # what a page may send anywhere, e.g. from a browser sending neither header
        for path in (
            f"/api/v1/studies/{study['id']}/cancel",
            f"/api/v1/studies/{study['id']}/extend",
            "/api/v1/studies",
        ):
            response = tokenless.post(path, headers={"Content-Type": content_type}, content=b"n_trials=5")
            assert response.status_code == 415 and content_type.split(";")[0] in response.json()["message"], (
                response.text
            )
    assert tokenless.get(f"/api/v1/studies/{study['id']}").json()["status"] == "running"


def test_the_cli_and_the_servers_own_pages_may_still_act(tokenless: TestClient) -> None:
    study = submitted(tokenless, Origin=SERVER, **{"Sec-Fetch-Site": "same-origin"})
    own_page = {"Origin": SERVER, "Sec-Fetch-Site": "same-origin"}
    cancelled = tokenless.post(f"/api/v1/studies/{study['id']}/cancel", headers=own_page)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    resumed = tokenless.post(f"/api/v1/studies/{study['id']}/resume")  # no Origin, no Sec-Fetch-Site: a script
    assert resumed.status_code == 200 and resumed.json()["status"] == "running", resumed.text
    typed = tokenless.post(f"/api/v1/studies/{study['id']}/cancel", headers={"Sec-Fetch-Site": "none"})
    assert typed.status_code == 200, typed.text


def test_a_token_does_not_make_a_cross_site_request_acceptable(tmp_path: Path) -> None:
    admin, _ = TokenStore(tmp_path / "tokens.json").create("admin", ["admin"])
    with TestClient(create_app(settings(tmp_path)), base_url="https://bench.example") as client:
        auth = {"Authorization": f"Bearer {admin}"}
        study = submitted(client, **auth)
        assert_refused(client.post(f"/api/v1/studies/{study['id']}/cancel", headers={**auth, **EVIL}), "Origin")
        same = client.post(f"/api/v1/studies/{study['id']}/cancel", headers={**auth, "Origin": "https://bench.example"})
        assert same.status_code == 200, same.text


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://bench.example", "bench.example", True),  # default port of the Origin's scheme
        ("https://bench.example", "bench.example:443", True),
        ("https://BENCH.example.", "bench.example", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://localhost:8000", "127.0.0.1:8000", False),  # another name is another origin
        ("http://bench.example", "bench.example:8000", False),
        ("http://bench.example:80/path", "bench.example", False),
        ("http://user@bench.example", "bench.example", False),
        ("ftp://bench.example", "bench.example", False),
        ("http://bench.example:99999", "bench.example:99999", False),
        ("bench.example", "bench.example", False),
    ],
)
def test_an_origin_is_the_servers_own_only_when_host_and_port_match(origin: str, host: str, same: bool) -> None:
    reason = cross_site_refusal("POST", host, origin, None)
    assert (reason is None) == same, reason


def test_reads_are_never_refused_and_refusals_echo_a_clipped_origin() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        assert cross_site_refusal(method, "127.0.0.1", "https://evil.example", "cross-site") is None
        assert simple_body_refusal(method, "text/plain") is None
    assert simple_body_refusal("POST", "application/json") is None and simple_body_refusal("POST", None) is None
    reason = cross_site_refusal("POST", "127.0.0.1", "https://" + "e" * 10_000, None)
    assert reason is not None and len(reason) < 200 and "10008 characters" in reason
