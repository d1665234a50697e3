"""Issue 19, items 4, 5, 6 and 10: what one request may cost a server. Stored bytes are bounded by a
server setting (estimated before any expansion), free lists are capped, reads of a study never load
every trial's config, YAML is parsed once by libyaml with its bounds checked on the parser's events,
every policy check runs on every distinct planned config, and values in errors are cut to 200
characters. Against the real app (SQLite) and, for the reads, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from sqlalchemy import Engine, event

from krpo_bench.service.studies import StudyService
from krpo_bench.spec.loading import SpecError, parse_yaml
from tests.api.test_api import BASE, SPEC


def local_app(home: Path, **settings: Any) -> TestClient:
    (home / "data").mkdir(parents=True, exist_ok=True)
    config = ApiSettings(
        db=f"sqlite:///{home / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        api_tokens_file=home / "tokens.json",
        data_roots=(home / "data",),
        list_cache_s=0,
        **settings,
    )
    return TestClient(create_app(config), base_url="http://localhost", raise_server_exceptions=False)


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    with local_app(tmp_path) as c:
        yield c


def spec(base: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    if base is not None:
        out["base"] = base
    out.update(changes)
    return out


def with_templates(templates: list[str], **changes: Any) -> dict[str, Any]:
    return spec({**BASE, "task": {**BASE["task"], "templates": templates}}, **changes)


def errors_of(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, (response.status_code, response.text[:500])
    return response.json()["errors"]


def stored_studies(client: TestClient) -> int:
    return len(client.app.state.service.list(limit=500))


# -- 4. stored bytes and list lengths -------------------------------------------------------------


def test_the_issues_body_is_refused_before_it_is_expanded(client: TestClient, tmp_path: Path) -> None:
    """900 KB of JSON, 100,000 templates, 100 seeds: it stored 205 MB; now a 422 naming the list."""
    body = json.dumps(with_templates(["{expr}"] * 100_000, seeds=100), separators=(",", ":")).encode()
    assert 800_000 < len(body) < 1_000_000
    db_before = (tmp_path / "jobs.db").stat().st_size
    started = time.process_time()
    errors = errors_of(client.post("/api/v1/studies", content=body, headers={"Content-Type": "application/json"}))
    assert time.process_time() - started < 5  # it took 11 CPU-s and grew the database by 205 MB
    assert [(e["path"], e["value"]) for e in errors] == [("base.task.templates", "100000 entries")]
    assert "at most 1000 entries" in errors[0]["message"]
    assert stored_studies(client) == 0 and (tmp_path / "jobs.db").stat().st_size == db_before


def test_templates_are_capped_per_trial_config_wherever_they_come_from(client: TestClient) -> None:
    errors = errors_of(client.post("/api/v1/studies", json=with_templates([f"{{expr}} {i}" for i in range(101)])))
    assert [(e["path"], e["type"]) for e in errors] == [("base.task.templates", "too_many_items")]
    assert "at most 100 entries" in errors[0]["message"]
    long_one = spec(variants={"long": {"task": {**BASE["task"], "templates": ["{expr}" + "x" * 1001]}}})
    errors = errors_of(client.post("/api/v1/studies", json=long_one))
    assert [(e["path"], e["type"]) for e in errors] == [("variants.long (task.templates)", "item_too_long")]
    assert "at most 1000 characters" in errors[0]["message"]


def test_stored_bytes_are_capped_by_the_server_setting(tmp_path: Path) -> None:
    """~92 KB of templates in each of 2 x 100 trials: 18 MB of configs, over the default 8 MB."""
    body = with_templates([f"{{expr}} {i} " + "x" * 900 for i in range(100)], seeds=100)
    with local_app(tmp_path / "default") as client:
        errors = errors_of(client.post("/api/v1/studies", json=body))
        assert [e["type"] for e in errors] == ["too_much_stored"]
        message = errors[0]["message"]
        assert "KRPO_BENCH_MAX_STORED_BYTES" in message and "8,000,000" in message and "200 trial configs" in message
        assert stored_studies(client) == 0
        assert client.post("/api/v1/studies", json={**body, "seeds": 40}).status_code == 201  # 7.4 MB fits
    with local_app(tmp_path / "large", max_stored_bytes=100_000_000) as client:
        assert client.post("/api/v1/studies", json=body).status_code == 201


def test_an_accepted_study_stores_about_what_the_cap_allows(tmp_path: Path) -> None:
    """Just under the cap (the server's own estimate), the database grows by at most twice the cap."""
    templates = [f"{{expr}} {i} " + "x" * 900 for i in range(100)]
    with local_app(tmp_path, max_stored_bytes=2_000_000) as client:
        before = sum(p.stat().st_size for p in tmp_path.glob("jobs.db*"))
        assert (
            client.post("/api/v1/studies", json=with_templates(templates, seeds=10)).status_code == 201
        )  # 20 trials, ~1.85 MB
        grown = sum(p.stat().st_size for p in tmp_path.glob("jobs.db*")) - before
        assert grown < 4_000_000, grown
        errors = errors_of(client.post("/api/v1/studies", json=with_templates(templates, seeds=11)))
        assert [e["type"] for e in errors] == ["too_much_stored"]


def test_a_search_cannot_be_extended_past_the_stored_bytes_cap(tmp_path: Path) -> None:
    base = {**BASE, "task": {**BASE["task"], "templates": [f"{{expr}} {i} " + "x" * 900 for i in range(100)]}}
    search = {
        "name": "s",
        "kind": "search",
        "base": base,
        "n_trials": 2,
        "parallelism": 1,
        "sampler": "random",
        "space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}},
    }
    with local_app(tmp_path, max_stored_bytes=1_000_000) as client:
        study = client.post("/api/v1/studies", json=search)
        assert study.status_code == 201, study.text
        errors = errors_of(client.post(f"/api/v1/studies/{study.json()['id']}/extend", json={"n_trials": 20}))
        assert [(e["path"], e["type"]) for e in errors] == [("n_trials", "too_much_stored")]


# -- 4. reads of a study ----------------------------------------------------------------------------

WHOLE_CONFIG = re.compile(r"(?<![(\w])jobs\.config\b(?!\s*->)", re.IGNORECASE)
"""The job's whole config column in a SELECT list (a JSON path into it reads ``jobs.config ->`` on
PostgreSQL and ``JSON_EXTRACT(jobs.config, ...)`` on SQLite)."""


@contextmanager
def recorded_sql(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements ``engine`` runs inside the block."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_study_reads_select_only_what_they_need(db_url: str, tmp_path: Path) -> None:
    service = StudyService(db_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    study = service.submit(spec(seeds=[3, 5]))
    while (job := service.queue.claim("w", 60)) is not None:
        service.queue.complete(job.id, job.attempt, {"final_accuracy": 0.25 + job.config["seed"] / 100})
    with recorded_sql(service.engine) as statements:
        results = service.results(study.id)
        light = service.queue.list_jobs(study.id, config_keys=("variant", "seed"))
    assert not [s for s in statements if WHOLE_CONFIG.search(s)], statements
    assert results.variant("krpo").seeds == [3, 5] and results.variant("krpo").values == [0.28, 0.3]
    assert sorted((j.config["variant"], j.config["seed"]) for j in light) == [
        ("grpo", 3),
        ("grpo", 5),
        ("krpo", 3),
        ("krpo", 5),
    ]
    assert all(set(j.config) == {"variant", "seed"} for j in light)
    service.engine.dispose()


def test_get_study_does_not_load_every_config(client: TestClient) -> None:
    created = client.post("/api/v1/studies", json=spec(seeds=3))
    assert created.status_code == 201
    with recorded_sql(client.app.state.service.engine) as statements:
        detail = client.get(f"/api/v1/studies/{created.json()['id']}")
        results = client.get(f"/api/v1/studies/{created.json()['id']}/results")
    assert detail.status_code == 200 and results.status_code == 200
    assert sum(v["counts"]["queued"] for v in detail.json()["variants"].values()) == 6
    assert not [s for s in statements if WHOLE_CONFIG.search(s)], statements


# -- 5. parsing -----------------------------------------------------------------------------------


def yaml_with_comment(size: int) -> bytes:
    lines = [
        "# R&D *draft*",
        "name: comment",
        "kind: ablation",
        "base:",
        "  task:",
        "    kind: arithmetic",
        "    templates:",
    ]
    lines += [f"      - '{{expr}} {i:07d}'" for i in range(size // 25)]
    return ("\n".join(lines) + "\n").encode()


def test_a_large_yaml_with_ampersand_and_star_in_a_comment_is_parsed_once_and_quickly(client: TestClient) -> None:
    body = yaml_with_comment(980_000)
    assert 900_000 < len(body) < 1_000_000
    started = time.process_time()
    response = client.post("/api/v1/studies", content=body, headers={"Content-Type": "application/yaml"})
    assert time.process_time() - started < 5  # 24 CPU-s before (the alias pre-scan parsed it twice in pure Python)
    assert [e["path"] for e in errors_of(response)] == ["base.task.templates"]


def test_an_ampersand_and_star_before_a_syntax_error_is_a_422(client: TestClient) -> None:
    body = b'name: "R&D *draft*"\nkind: ablation\nbase: {model: {name: tiny-arith}\n  task: [\n'
    errors = errors_of(client.post("/api/v1/studies", content=body, headers={"Content-Type": "application/yaml"}))
    assert errors[0]["message"].startswith("YAML syntax error") and errors[0]["value"].startswith("line ")


def test_yaml_node_count_and_aliases_are_refused_from_the_parsers_events() -> None:
    with pytest.raises(SpecError, match="more than 50,000 YAML nodes"):
        parse_yaml(b"seeds: [" + b"1," * 50_001 + b"1]")
    with pytest.raises(SpecError, match="anchors/aliases are not allowed"):
        parse_yaml(b"a: &x 1\nb: 2\n")  # an anchor alone, never used
    assert parse_yaml(b"# R&D *draft*\nname: 'R&D *draft*'\n") == {"name": "R&D *draft*"}


# -- 6. policy on every planned config ------------------------------------------------------------


def test_the_model_size_cap_applies_to_a_variant_meeting_a_grid_value(client: TestClient) -> None:
    body = spec(
        variants={"big": {"model": {"name": "tiny-arith", "tiny": {"hidden_size": 8192, "num_heads": 64}}}},
        grid={"model.tiny.num_layers": [1024]},
    )
    errors = errors_of(client.post("/api/v1/studies", json=body))
    assert [(e["path"], e["type"]) for e in errors] == [
        ("grid.model.tiny.num_layers[0] (variant big) (model.tiny)", "model_too_large")
    ]
    assert "KRPO_BENCH_MAX_MODEL_PARAMS" in errors[0]["message"]


def test_the_model_size_cap_applies_to_a_searchs_largest_values(client: TestClient) -> None:
    search = {
        "name": "s",
        "kind": "search",
        "base": BASE,
        "n_trials": 2,
        "parallelism": 1,
        "sampler": "random",
        "space": {
            "model.tiny.hidden_size": {"type": "choice", "choices": [128, 8192]},
            "model.tiny.num_layers": {"type": "int", "low": 1, "high": 1024},
        },
    }
    errors = errors_of(client.post("/api/v1/studies", json=search))
    assert [e["type"] for e in errors] == ["model_too_large"]
    assert errors[0]["path"].startswith("space.model.tiny.") and "largest values" in errors[0]["path"]


def test_a_grid_value_that_needs_its_variant_is_accepted(client: TestClient) -> None:
    data = client.app.state.settings.data_roots[0]
    (data / "qa.jsonl").write_text('{"q": "1+1", "answer": "2"}\n')
    jsonl = {"task": {"kind": "jsonl", "path": str(data / "qa.jsonl"), "rewards": [{"name": "exact"}]}}
    body = spec(variants={"file": jsonl}, grid={"task.question_field": ["q"]})
    response = client.post("/api/v1/studies", json=body)
    assert response.status_code == 201, response.text  # was a 500: the grid value was checked on the base alone


# -- 10. values in errors ----------------------------------------------------------------------------


def test_long_values_are_cut_to_200_characters_in_every_error(client: TestClient) -> None:
    data = client.app.state.settings.data_roots[0]
    long_path = str(data / ("a" * 400_000))
    response = client.post("/api/v1/studies", json=spec({**BASE, "task": {"kind": "jsonl", "path": long_path}}))
    errors = errors_of(response)
    assert len(response.content) < 5_000  # the path was echoed whole: 800 KB
    assert errors[0]["path"] == "base.task.path" and errors[0]["value"].endswith(f"... ({len(long_path)} characters)")
    assert len(errors[0]["value"]) < 230
    outside = "/" + "b" * 300 + "/train.jsonl"  # a policy error (outside the data roots)
    errors = errors_of(client.post("/api/v1/studies", json=spec({**BASE, "task": {"kind": "jsonl", "path": outside}})))
    assert (
        errors[0]["type"] == "path_outside_data_roots"
        and errors[0]["value"] == outside[:200] + f"... ({len(outside)} characters)"
    )


def test_big_mappings_are_refused_unwalked_and_errors_are_counted_past_100(client: TestClient) -> None:
    wide = spec({**BASE, "wide": {f"k{i}": i for i in range(50_000)}})
    errors = errors_of(client.post("/api/v1/studies", json=wide))
    assert [(e["path"], e["value"], e["message"]) for e in errors] == [
        ("base.wide", "50000 entries", "mappings hold at most 1000 keys")
    ]
    many = spec(variants={f"v{i}": {"training": {f"typo{j}": 1 for j in range(3)}} for i in range(50)})
    response = client.post("/api/v1/studies", json=many)
    errors = errors_of(response)
    assert len(errors) == 101 and errors[-1] == {
        "path": "",
        "value": 50,
        "message": "and 50 more problems",
        "type": "too_many_errors",
    }
