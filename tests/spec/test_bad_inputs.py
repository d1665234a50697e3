"""The bad-input corpus (tests/bad_inputs): every malformed or hostile study file is refused by the
CLI (`validate`, `submit`) and by the API (POST /api/v1/studies as YAML) with an error that names
what is wrong, never a crash or a traceback, and nothing is stored. EXPECTED.yaml says, per file,
which layer refuses it and which path/message the error must name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from typer.testing import CliRunner

from krpo_bench import cli

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "EXPECTED.yaml").read_text())
FILES = sorted(p.name for p in CORPUS.glob("*.yaml") if p.name != "EXPECTED.yaml")
CLI_REFUSED = [f for f in FILES if "cli" in EXPECTED[f].get("refused_by", ["cli", "api"])]
API_ONLY = [f for f in FILES if f not in CLI_REFUSED]


def expectation(name: str, layer: str) -> dict[str, Any]:
    """The file's path/message/status for one layer (its layer block overrides the shared keys)."""
    entry = EXPECTED[name]
    out = {k: v for k, v in entry.items() if k in ("path", "message")}
    out.update(entry.get(layer) or {})
    return out


def squash(text: str) -> str:
    return " ".join(text.split())


def test_corpus_is_complete_and_large_enough() -> None:
    assert len(FILES) >= 30
    assert sorted(EXPECTED) == FILES, "every corpus file needs an EXPECTED.yaml entry, and only those"
    for name in FILES:
        for layer in ("cli", "api"):
            rule = expectation(name, layer)
            assert rule.get("path") or rule.get("message"), f"{name}: nothing to check for {layer}"
    assert (CORPUS / "huge_file.yaml").stat().st_size > 1_000_000


# -- CLI ------------------------------------------------------------------------------------------


@pytest.fixture()
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(cli.err, "width", 100_000)  # rich must not wrap a long path across lines
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    result = runner.invoke(cli.app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"krpo-bench {' '.join(args)} crashed: {result.exception!r}"
    )
    assert "Traceback" not in result.output
    return result


def check_cli_error(name: str, result: Any) -> None:
    rule = expectation(name, "cli")
    output = squash(result.output)
    assert result.exit_code == 2, (name, result.exit_code, output)
    assert "error:" in output and "invalid spec" in output, output
    if rule.get("path"):
        assert rule["path"] in output, (name, rule["path"], output)
    if rule.get("message"):
        assert squash(rule["message"]) in output, (name, rule["message"], output)


@pytest.mark.parametrize("name", CLI_REFUSED)
def test_cli_validate_refuses(runner: CliRunner, name: str) -> None:
    check_cli_error(name, invoke(runner, "validate", str(CORPUS / name)))


def test_cli_submit_refuses_and_stores_nothing(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    for name in CLI_REFUSED:
        check_cli_error(
            name,
            invoke(
                runner,
                "submit",
                str(CORPUS / name),
                "--db",
                f"sqlite:///{db}",
                "--mlflow",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
            ),
        )
    if db.exists():  # refusals happen before the database is opened; if it was, it must be empty
        from krpo_bench.service.studies import StudyService

        assert StudyService(f"sqlite:///{db}", f"sqlite:///{tmp_path / 'mlflow.db'}").list() == []


@pytest.mark.parametrize("name", API_ONLY)
def test_cli_validate_accepts_what_only_server_policy_refuses(runner: CliRunner, name: str) -> None:
    result = invoke(runner, "validate", str(CORPUS / name))
    assert result.exit_code == 0 and "ok" in result.output, result.output


# -- API ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    home = tmp_path_factory.mktemp("bad-inputs-api")
    (home / "data").mkdir()
    settings = ApiSettings(
        db=f"sqlite:///{home / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        api_tokens_file=home / "tokens.json",
        data_roots=(home / "data",),
        list_cache_s=0,
    )
    with TestClient(create_app(settings), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client, home / "data"


@pytest.mark.parametrize("name", FILES)
def test_api_refuses_with_a_json_error_naming_the_path(api: tuple[TestClient, Path], name: str) -> None:
    client, data_root = api
    body = (CORPUS / name).read_bytes().replace(b"{DATA}", str(data_root).encode())
    response = client.post("/api/v1/studies", content=body, headers={"Content-Type": "application/yaml"})
    rule = expectation(name, "api")
    assert response.status_code == rule.get("status", 422), (name, response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "' not in response.text
    payload = response.json()
    assert payload["error"] and payload["request_id"] and isinstance(payload["errors"], list)
    errors = payload["errors"]
    if rule.get("path"):
        assert any(rule["path"] in e["path"] for e in errors), (name, rule["path"], errors)
    if rule.get("message"):
        messages = [f"{e['message']} (got {e.get('value')!r})" for e in errors] + [payload["message"]]
        assert any(rule["message"] in m for m in messages), (name, rule["message"], messages)


def test_api_stored_nothing(api: tuple[TestClient, Path]) -> None:
    client, data_root = api
    for name in FILES:  # (again, so this test holds on its own too)
        body = (CORPUS / name).read_bytes().replace(b"{DATA}", str(data_root).encode())
        assert (
            client.post("/api/v1/studies", content=body, headers={"Content-Type": "application/yaml"}).status_code
            >= 400
        )
    listing = client.get("/api/v1/studies", params={"limit": 500})
    assert listing.status_code == 200 and listing.json()["items"] == []
    assert client.app.state.service.list(limit=500) == []
