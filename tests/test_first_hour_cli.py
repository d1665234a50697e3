"""A new user's first hour from a shell (issue 25): the README's REST example runs as written
against a real server, and ``krpo-bench submit --api`` works with only what the README's first
command installs (the package and its ``dashboards`` extra): every installed module outside that
install is made unimportable in the CLI's process; nothing is installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.routers import home
from krpo_bench.api.settings import ApiSettings
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from krpo_bench.service.study_state import WAITING_FOR_WORKER, display_state
from tests.api.test_api_server import start as start_server
from tests.api.test_api_server import stop as stop_server

ROOT = Path(__file__).resolve().parents[1]
BLOCKING_CLI = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Uninstalled())
from krpo_bench.cli import app
app(sys.argv[2:], prog_name="krpo-bench")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A token-less ``krpo-bench serve`` on loopback (as the README's example assumes)."""
    proc, url = start_server(tmp_path_factory.mktemp("first-hour"))
    yield url
    output = stop_server(proc)
    assert "Traceback" not in output, output


def readme_rest_example() -> list[str]:
    """The command lines of the README's REST example (the bash block under "### Over REST")."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"### Over REST\n.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no REST example"
    return [line for line in block[1].splitlines() if line.strip()]


def test_the_readme_rest_example_runs_against_a_real_server(server: str) -> None:
    lines = readme_rest_example()
    assert lines[0].startswith("API="), lines[0]
    answers = []
    for line in lines[1:]:
        done = subprocess.run(
            ["bash", "-c", f"API={server}\n{line}"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        answers.append(json.loads(done.stdout))
    submitted, status, results, cancelled = answers
    assert submitted["name"] == "quickstart" and submitted["total"] == 6, submitted
    assert status["id"] == submitted["id"], "the name resolves to the study just submitted"
    assert status["counts"]["queued"] == 6, status
    assert status["status"] == "running" and status["state"] == "waiting for a worker", "the server runs no worker"
    assert results["study_id"] == submitted["id"], results
    assert cancelled["id"] == submitted["id"] and cancelled["status"] == "cancelled", cancelled


def installed_by_readme() -> set[str]:
    """Canonical names of the distributions ``pip install -e ".[dashboards]"`` installs: the
    project's dependencies and its ``dashboards`` extra as pyproject.toml declares them, with
    their dependencies (and the extras they ask for) as installed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["dashboards"])]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(requirement.name).requires or []
        except PackageNotFoundError:
            continue
        for dependency in map(Requirement, requires):
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *requirement.extras)):
                todo.append(dependency)
    return {name for name, _ in seen} | {"krpo-bench"}


def not_installed_by_readme() -> set[str]:
    """Top-level modules of this environment that the README's install would not provide."""
    wanted = installed_by_readme()
    return {
        module
        for module, dists in packages_distributions().items()
        if not any(canonicalize_name(d) in wanted for d in dists) and module.isidentifier()
    }


def run_cli(blocked: set[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKING_CLI, ",".join(sorted(blocked)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_api_works_after_the_readme_install(server: str) -> None:
    blocked = not_installed_by_readme()
    assert {"optuna_dashboard", "fastapi_offline"} <= blocked and "httpx" not in blocked, sorted(blocked)
    done = run_cli(blocked, "submit", "--api", server, "studies/quickstart.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    study = json.loads(done.stdout)
    assert study["name"] == "quickstart" and study["total"] == 6, study


def test_submit_api_without_httpx_says_what_to_install(server: str) -> None:
    done = run_cli(not_installed_by_readme() | {"httpx"}, "submit", "--api", server, "studies/quickstart.yaml")
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout, done.stderr
    assert 'pip install -e ".[dashboards]"' in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_display_state_says_queued_or_waiting_only_while_nothing_runs() -> None:
    queued = {"queued": 6, "running": 0}
    assert display_state("running", queued, workers=0) == WAITING_FOR_WORKER
    assert display_state("running", queued, workers=1) == "queued"
    assert display_state("running", {"queued": 5, "running": 1}, workers=0) == "running"
    assert display_state("cancelled", queued, workers=0) == "cancelled"
    assert display_state("running", {"succeeded": 6}, workers=0) == "running"


def test_the_docs_page_names_its_package_when_it_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
    )
    with TestClient(create_app(settings), base_url="http://localhost") as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
        assert http.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        monkeypatch.setattr(home, "docs_assets_folder", lambda: None)
        missing = http.get("/docs")
        assert missing.status_code == 503 and 'pip install -e ".[api]"' in missing.json()["message"], missing.text
        assert "No studies yet" in http.get("/").text
