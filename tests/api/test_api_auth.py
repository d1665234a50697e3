"""Bearer tokens and scopes: 401 without or with a bad token, 403 without the scope, hashed storage,
revocation, and no public bind without tokens."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.auth import TokenStore, hash_token
from krpo_bench.api.serve import bind_refusal, is_loopback
from krpo_bench.api.settings import ApiSettings
from typer.testing import CliRunner

from krpo_bench.cli import app as cli

STUDY = {"name": "a", "kind": "ablation", "base": {"task": {"kind": "arithmetic"}, "training": {"max_steps": 5}}}
ID = "00000000-0000-0000-0000-000000000000"
# (method, path, scope needed); with the ``admin`` token each answers 404/422, proving it got past auth
ROUTES = [
    ("GET", "/api/v1/studies", "read"),
    ("GET", f"/api/v1/studies/{ID}", "read"),
    ("GET", f"/api/v1/studies/{ID}/jobs", "read"),
    ("GET", f"/api/v1/studies/{ID}/results", "read"),
    ("GET", f"/api/v1/jobs/{ID}", "read"),
    ("GET", "/api/v1/workers", "read"),
    ("GET", f"/studies/{ID}/dashboard", "read"),
    ("GET", "/optuna/api/studies", "read"),
    ("POST", "/api/v1/studies", "submit"),
    ("POST", f"/api/v1/studies/{ID}/cancel", "submit"),  # a submit token: its own studies (tests/api/test_tenancy.py)
    ("POST", f"/api/v1/studies/{ID}/resume", "submit"),
    ("POST", f"/api/v1/studies/{ID}/extend", "submit"),
]
RANK = {"read": 0, "submit": 1, "admin": 2}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth")


@pytest.fixture(scope="module")
def tokens(home: Path) -> dict[str, str]:
    store = TokenStore(home / "tokens.json")
    return {scope: store.create(f"{scope}-user", [scope])[0] for scope in RANK}


@pytest.fixture(scope="module")
def client(home: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    settings = ApiSettings(
        db=f"sqlite:///{home / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        api_tokens_file=home / "tokens.json",
        data_roots=(home,),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def call(client: TestClient, method: str, path: str, token: str | None = None, scheme: str = "Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    body = {"n_trials": 1} if path.endswith("/extend") else STUDY if method == "POST" else None
    return client.request(method, path, headers=headers, json=body)


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_missing_or_invalid_token_gets_401(client: TestClient, method: str, path: str, scope: str) -> None:
    for response in (
        call(client, method, path),
        call(client, method, path, "kb_not-a-token"),
        call(client, method, path, "user:password", scheme="Basic"),
    ):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_scopes(client: TestClient, tokens: dict[str, str], method: str, path: str, scope: str) -> None:
    for held, token in tokens.items():
        response = call(client, method, path, token)
        if RANK[held] < RANK[scope]:
            assert response.status_code == 403, (held, response.text)
            assert f'scope="{scope}"' in response.headers["www-authenticate"]
        else:
            assert response.status_code not in (401, 403), (held, response.text)


def test_probes_and_schema_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert schema["paths"]["/api/v1/studies"]["post"]["security"] == [{"HTTPBearer": []}]


def test_tokens_are_stored_hashed(home: Path, tokens: dict[str, str]) -> None:
    path = home / "tokens.json"
    text = path.read_text()
    assert not any(token in text for token in tokens.values())
    assert all(hash_token(token) in text for token in tokens.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_revoked_tokens_stop_working_without_a_restart(client: TestClient, home: Path) -> None:
    store = TokenStore(home / "tokens.json")
    token, record = store.create("temporary", ["read"])
    assert call(client, "GET", "/api/v1/workers", token).status_code == 200
    assert store.revoke(record.id) == 1
    assert call(client, "GET", "/api/v1/workers", token).status_code == 401


def test_unknown_scopes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scopes"):
        TokenStore(tmp_path / "t.json").create("x", ["root"])


def test_public_bind_needs_tokens() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert bind_refusal("0.0.0.0", has_tokens=False)
    assert bind_refusal("::", has_tokens=False)
    assert bind_refusal("0.0.0.0", has_tokens=True) is None
    assert bind_refusal("127.0.0.1", has_tokens=False) is None


def test_serve_refuses_a_public_bind_without_tokens(tmp_path: Path) -> None:
    env = {"KRPO_BENCH_HOME": str(tmp_path), "KRPO_BENCH_API_TOKENS_FILE": str(tmp_path / "none.json")}
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path / 'x.db'}"], env=env)
    assert result.exit_code == 2
    assert "refusing to listen on '0.0.0.0' without API tokens" in result.output


def test_token_commands(tmp_path: Path) -> None:
    env = {"KRPO_BENCH_HOME": str(tmp_path), "KRPO_BENCH_API_TOKENS_FILE": str(tmp_path / "tokens.json")}
    runner = CliRunner()
    created = runner.invoke(cli, ["token", "create", "ci", "--scope", "submit"], env=env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("kb_")
    assert TokenStore(tmp_path / "tokens.json").lookup(token).scopes == ["submit"]
    listed = runner.invoke(cli, ["token", "list"], env=env)
    assert "ci" in listed.output and "submit" in listed.output and token not in listed.output
    assert runner.invoke(cli, ["token", "create", "x", "--scope", "root"], env=env).exit_code == 2
    assert runner.invoke(cli, ["token", "revoke", "ci"], env=env).exit_code == 0
    assert runner.invoke(cli, ["token", "revoke", "ci"], env=env).exit_code == 1
