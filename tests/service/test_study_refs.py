"""Study arguments: an id, a study name (its newest study), ``name~N`` (an older one) or a unique id
prefix, resolved by the service for the CLI and the API alike; an ambiguous prefix is an error
listing the candidates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from typer.testing import CliRunner

from krpo_bench.cli import app as cli
from krpo_bench.service.studies import AmbiguousStudy, StudyNotFound, StudyService
from tests.db import add_study
from tests.trial_specs import tiny_ablation


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyService, dict[str, str]]:
    """Studies 'alone', 'twin' (twice) and '%'; their ids by a label."""
    home = tmp_path_factory.mktemp("refs")
    service = StudyService(f"sqlite:///{home / 'jobs.db'}", f"sqlite:///{home / 'mlflow.db'}")
    ids = {
        label: service.submit(tiny_ablation(name)).id
        for label, name in (("alone", "alone"), ("twin1", "twin"), ("twin2", "twin"), ("percent", "%"))
    }
    return service, ids


@pytest.fixture()
def rows(db_url: str) -> Iterator[tuple[StudyService, dict[str, str]]]:
    """On SQLite and PostgreSQL: study rows 'alone', 'twin' (twice) and '%'; their ids by a label."""
    service = StudyService(db_url, "sqlite:///never-opened.db")  # resolving never touches MLflow
    ids = {
        label: add_study(service.engine, name)
        for label, name in (("alone", "alone"), ("twin1", "twin"), ("twin2", "twin"), ("percent", "%"))
    }
    yield service, ids
    service.engine.dispose()  # no PostgreSQL connection left for the garbage collector


def test_the_service_resolves_ids_prefixes_and_names(rows: tuple[StudyService, dict[str, str]]) -> None:
    service, ids = rows
    alone = ids["alone"]
    assert service.resolve(alone) == alone
    assert service.resolve("alone") == alone
    prefix = next(
        alone[:n] for n in range(1, 37) if not any(i.startswith(alone[:n]) for k, i in ids.items() if k != "alone")
    )
    assert service.resolve(prefix) == alone
    assert service.resolve("%") == ids["percent"], "a name with a LIKE wildcard matches only itself"
    with pytest.raises(StudyNotFound):
        service.resolve("no-such-study")
    with pytest.raises(StudyNotFound):
        service.resolve("_" * 8)


def test_a_name_resolves_to_its_newest_study_and_name_n_to_older_ones(
    rows: tuple[StudyService, dict[str, str]],
) -> None:
    service, ids = rows
    assert service.resolve("twin") == ids["twin2"], "a resubmitted name keeps resolving: to the newest study"
    assert service.resolve("twin~1") == ids["twin1"]
    with pytest.raises(StudyNotFound):
        service.resolve("twin~2")
    assert [service.ref_of(service.get(ids[k])) for k in ("twin2", "twin1", "alone")] == ["twin", "twin~1", "alone"]
    with pytest.raises(AmbiguousStudy) as err:
        service.resolve("")  # a prefix of every id
    assert ids["twin1"] in str(err.value) and ids["alone"] in str(err.value)


def test_cli_and_api_take_the_same_references(studies: tuple[StudyService, dict[str, str]], tmp_path: Path) -> None:
    service, ids = studies
    result = CliRunner().invoke(cli, ["status", "alone", "--db", service.db_url, "--mlflow", service.mlflow_uri])
    assert result.exit_code == 0 and ids["alone"] in result.output, result.output
    result = CliRunner().invoke(cli, ["status", "--db", service.db_url, "--mlflow", service.mlflow_uri])
    assert result.exit_code == 0 and "(older: twin~1)" in result.output, result.output
    result = CliRunner().invoke(cli, ["cancel", "twin~1", "--db", service.db_url, "--mlflow", service.mlflow_uri])
    assert result.exit_code == 0 and ids["twin1"] in result.output, result.output
    assert [service.get(ids[k]).status for k in ("twin1", "twin2")] == ["cancelled", "running"], (
        "only the older twin was cancelled"
    )

    settings = ApiSettings(
        db=service.db_url,
        mlflow_tracking_uri=service.mlflow_uri,
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
    )
    with TestClient(create_app(settings), base_url="http://localhost") as http:
        assert http.get("/api/v1/studies/alone").json()["id"] == ids["alone"]
        assert http.get(f"/api/v1/studies/{ids['alone'][:8]}/results").json()["study_id"] == ids["alone"]
        assert http.get("/api/v1/studies/twin").json()["id"] == ids["twin2"]
        assert http.get("/api/v1/studies/twin~1").json()["id"] == ids["twin1"]
        assert http.get("/api/v1/studies/no-such-study").status_code == 404
