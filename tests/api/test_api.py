"""The REST API through the ASGI test client: submission, reads, control, policy, errors, mounts."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.policy import Policy, admit, looks_local, under_roots
from krpo_bench.api.settings import ApiSettings
from sqlalchemy import event

from krpo_bench.client import ApiError, Client
from krpo_bench.spec.loading import SpecError
from tests.probe.test_probe import PROBE

BASE = {
    "model": {"name": "tiny-arith"},
    "task": {
        "kind": "arithmetic",
        "num_terms": [2, 2],
        "num_digits": [1, 2],
        "operators": ["+"],
        "parentheses": False,
        "unary_minus": False,
        "templates": ["{expr}="],
        "compact": True,
        "rewards": [{"name": "exact"}],
    },
    "training": {"max_steps": 5},
}
SPEC = {
    "name": "t",
    "kind": "ablation",
    "seeds": 2,
    "base": BASE,
    "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
}
SEARCH = {
    "name": "s",
    "kind": "search",
    "base": BASE,
    "n_trials": 2,
    "parallelism": 1,
    "sampler": "random",
    "space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}},
}


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out.update(changes)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[TestClient]:
    (home / "data").mkdir()
    settings = ApiSettings(
        db=f"sqlite:///{home / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        api_tokens_file=home / "tokens.json",
        data_roots=(home / "data",),
        mlflow_ui_url="http://mlflow.test:5000",
        list_cache_s=0,
        max_body_bytes=200_000,
    )
    with TestClient(create_app(settings), base_url="http://localhost") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def study(client: TestClient) -> dict[str, Any]:
    response = client.post("/api/v1/studies", json=SPEC)
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/api/v1/studies", json=body, headers=headers)


def test_submit_json_answers_201_with_location(client: TestClient, study: dict[str, Any]) -> None:
    assert study["kind"] == "ablation" and study["status"] == "running" and study["total"] == 4
    assert study["counts"]["queued"] == 4 and study["best_trial"] is None
    assert set(study["variants"]) == {"grpo", "krpo"} and study["variants"]["krpo"]["counts"]["queued"] == 2
    again = client.get(f"/api/v1/studies/{study['id']}")
    assert again.status_code == 200 and again.json()["id"] == study["id"] and again.json()["spec"]["seeds"] == 2


def test_a_study_detail_is_read_in_one_transaction_and_answers_as_its_submission_did(tmp_path: Path) -> None:
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
    )
    app = create_app(settings)
    test_client = TestClient(app, base_url="http://localhost")  # no lifespan: no MLflow outbox reading meanwhile
    engine = app.state.service.engine
    try:
        posted = submit(test_client, SPEC)
        begins: list[Any] = []
        begun = begins.append
        event.listen(engine, "begin", begun)
        try:
            got = test_client.get(f"/api/v1/studies/{posted.json()['id']}")
        finally:
            event.remove(engine, "begin", begun)
        assert len(begins) == 2, "one read resolves the study reference, one reads the study's detail"
        assert got.status_code == 200 and got.json() == posted.json()
    finally:
        engine.dispose()


def test_location_header_points_at_the_study(client: TestClient) -> None:
    response = submit(client, spec(name="located"))
    assert response.headers["location"] == f"/api/v1/studies/{response.json()['id']}"
    assert client.get(response.headers["location"]).json()["name"] == "located"


def test_submit_yaml(client: TestClient) -> None:
    text = yaml.safe_dump(spec(name="from-yaml"))
    response = client.post("/api/v1/studies", content=text, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "from-yaml"


def test_idempotency_key_returns_the_same_study(client: TestClient) -> None:
    first = submit(client, spec(name="idem"), **{"Idempotency-Key": "key-1"})
    second = submit(client, spec(name="idem"), **{"Idempotency-Key": "key-1"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    names = [s["name"] for s in client.get("/api/v1/studies", params={"limit": 500}).json()["items"]]
    assert names.count("idem") == 1
    reused = submit(client, spec(name="other"), **{"Idempotency-Key": "key-1"})
    assert reused.status_code == 409 and "Idempotency-Key" in reused.json()["message"]


def test_invalid_spec_lists_every_error_with_path_value_and_rule(client: TestClient) -> None:
    bad = spec(base={**BASE, "model": {"name": "gpt-17"}, "training": {"max_steps": 0}})
    response = submit(client, bad)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_spec" and body["request_id"]
    found = {e["path"]: e for e in body["errors"]}
    assert found["base.training.max_steps"]["value"] == 0
    assert found["base.training.max_steps"]["type"] == "greater_than_equal"
    assert found["base.model.name"]["value"] == "gpt-17" and found["base.model.name"]["type"] == "value_error"


@pytest.mark.parametrize(
    ("content", "content_type", "status", "rule"),
    [
        (b"name: [", "application/yaml", 422, "parse_error"),
        (b"{not json", "application/json", 422, "json_invalid"),
        (b'{"name": NaN}', "application/json", 422, "json_invalid"),
        (b"[1, 2]", "application/json", 422, "type_error"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 422, "json_invalid"),
        (
            b'{"name": "x", "kind": "ablation", "base": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}",
            "application/json",
            422,
            "too_deep",
        ),
        (b"name: t\nkind: ablation\nseeds: .nan\nbase: {}", "application/yaml", 422, "finite_number"),
        (b"{}", "text/plain", 415, None),
    ],
)
def test_malformed_bodies_are_client_errors(
    client: TestClient, content: bytes, content_type: str, status: int, rule: str | None
) -> None:
    response = client.post("/api/v1/studies", content=content, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    if rule:
        assert rule in {e["type"] for e in response.json()["errors"]}


def test_body_size_is_capped(client: TestClient) -> None:
    big = spec(description="x" * 300_000)
    assert submit(client, big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield json.dumps(big).encode()

    response = client.post("/api/v1/studies", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"


def test_trials_per_study_are_capped(client: TestClient) -> None:
    response = submit(client, spec(seeds=600))  # 2 variants x 600 seeds > 1,000
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "too_many_trials"


def test_remote_code_is_refused(client: TestClient) -> None:
    base = {**BASE, "model": {"name": "hf:org/model", "trust_remote_code": True}}
    errors = submit(client, spec(base=base)).json()["errors"]
    assert [(e["path"], e["type"]) for e in errors] == [("base.model.trust_remote_code", "remote_code_refused")]


def _jsonl_base(path: str, test_path: str | None = None) -> dict[str, Any]:
    task = {
        "kind": "jsonl",
        "path": path,
        **({"test_path": test_path} if test_path else {}),
        "rewards": [{"name": "exact"}],
    }
    return {**BASE, "task": task}


def test_local_paths_must_lie_under_the_data_roots(client: TestClient, home: Path) -> None:
    data = home / "data"
    (data / "train.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n')
    (home / "secret.jsonl").write_text("{}\n")
    (data / "escape.jsonl").symlink_to(home / "secret.jsonl")
    accepted = submit(client, spec(name="local-ok", base=_jsonl_base(str(data / "train.jsonl"))))
    assert accepted.status_code == 201, accepted.text
    for path in [str(home / "secret.jsonl"), f"{data}/../secret.jsonl", str(data / "escape.jsonl"), "train.jsonl"]:
        response = submit(client, spec(base=_jsonl_base(path)))
        assert response.status_code == 422, path
        assert response.json()["errors"] == [
            {
                "path": "base.task.path",
                "value": path,
                "message": response.json()["errors"][0]["message"],
                "type": "path_outside_data_roots",
            }
        ]


def test_paths_set_by_variants_models_and_datasets_are_checked(client: TestClient, home: Path) -> None:
    outside = str(home / "secret.jsonl")
    variants = {
        "a": {"estimator": {"name": "grpo"}},
        "b": {"task": {"kind": "jsonl", "path": outside, "rewards": [{"name": "exact"}]}},
    }
    errors = submit(client, spec(variants=variants)).json()["errors"]
    assert [(e["path"], e["type"]) for e in errors] == [("variants.b (task.path)", "path_outside_data_roots")]
    model = submit(client, spec(base={**BASE, "model": {"name": f"hf:{home}"}})).json()["errors"]
    assert (model[0]["path"], model[0]["value"]) == ("base.model.name", f"hf:{home}")
    inside = submit(client, spec(name="local-model", base={**BASE, "model": {"name": f"hf:{home / 'data'}"}}))
    assert inside.status_code == 201, inside.text
    dataset = {**BASE, "task": {"kind": "hf", "dataset": str(home), "rewards": [{"name": "exact"}]}}
    assert submit(client, spec(base=dataset)).json()["errors"][0]["path"] == "base.task.dataset"
    hub = {
        **BASE,
        "model": {"name": "hf:HuggingFaceTB/SmolLM2-135M-Instruct"},
        "task": {"kind": "hf", "dataset": "openai/gsm8k", "rewards": [{"name": "exact"}]},
    }
    assert submit(client, spec(name="hub-ids", base=hub)).status_code == 201


def test_policy_functions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    assert under_roots(str(root / "sub" / "f.jsonl"), (root,))
    assert not under_roots(str(root / "link" / "f.jsonl"), (root,))
    assert not under_roots(str(root / "sub" / ".." / ".." / "f.jsonl"), (root,))
    assert not under_roots("sub/f.jsonl", (root,))
    assert looks_local("/models/x") and looks_local("./x") and looks_local("~/x") and looks_local("a/../b")
    assert not looks_local("org/name") and not looks_local("gsm8k")
    search_space = {**SEARCH, "space": {"model.trust_remote_code": {"type": "choice", "choices": [False, True]}}}
    with pytest.raises(SpecError) as err:
        admit(search_space, Policy((root,)))
    assert err.value.errors[0]["path"] == "space.model.trust_remote_code (model.trust_remote_code)"
    assert admit(search_space, Policy((root,), allow_remote_code=True)).kind == "search"


def test_list_pagination_and_status_filter(client: TestClient, study: dict[str, Any]) -> None:
    for i in range(3):
        submit(client, spec(name=f"page-{i}"))
    first = client.get("/api/v1/studies", params={"limit": 2}).json()
    assert [s["name"] for s in first["items"]] == ["page-2", "page-1"] and first["next_offset"] == 2
    second = client.get("/api/v1/studies", params={"limit": 2, "offset": 2}).json()
    assert second["items"][0]["name"] == "page-0"
    everything = client.get("/api/v1/studies", params={"limit": 500}).json()
    assert everything["next_offset"] is None
    cancelled = client.post(f"/api/v1/studies/{first['items'][0]['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    only = client.get("/api/v1/studies", params={"status": "cancelled"}).json()["items"]
    assert [s["id"] for s in only] == [cancelled["id"]]
    assert client.get("/api/v1/studies", params={"status": "bogus"}).status_code == 422
    assert client.get("/api/v1/studies", params={"limit": 0}).json()["errors"][0]["path"] == "query.limit"


def test_jobs_of_a_study(client: TestClient, study: dict[str, Any]) -> None:
    page = client.get(f"/api/v1/studies/{study['id']}/jobs", params={"limit": 3}).json()
    assert page["total"] == 4 and len(page["items"]) == 3 and page["next_offset"] == 3
    assert {j["variant"] for j in page["items"]} <= {"grpo", "krpo"} and page["items"][0]["seed"] in (0, 1)
    queued = client.get(f"/api/v1/studies/{study['id']}/jobs", params={"status": "succeeded"}).json()
    assert queued["total"] == 0 and queued["items"] == []


def test_job_detail_results_and_best_trial(client: TestClient) -> None:
    study_id = submit(client, spec(name="worked", priority=100)).json()["id"]  # its jobs are claimed first
    queue = client.app.state.service.queue
    claimed = queue.claim("worker-a", 60)
    assert claimed.study_id == study_id
    queue.fail(claimed.id, claimed.attempt, "CUDA out of memory")
    again = queue.claim("worker-b", 60)
    assert again.id == claimed.id
    queue.set_mlflow_run(again.id, again.attempt, "run123")
    queue.complete(again.id, again.attempt, {"final_accuracy": 0.75})

    job = client.get(f"/api/v1/jobs/{claimed.id}").json()
    assert job["status"] == "succeeded" and job["result"] == {"final_accuracy": 0.75}
    assert [(a["worker"], a["outcome"], a["error"]) for a in job["attempts"]] == [
        ("worker-a", "failed", "CUDA out of memory"),
        ("worker-b", "succeeded", None),
    ]
    experiment = client.get(f"/api/v1/studies/{study_id}").json()["mlflow_experiment_id"]
    assert job["mlflow_run_url"] == f"http://mlflow.test:5000/#/experiments/{experiment}/runs/run123"
    assert job["config"]["trial"]["training"]["max_steps"] == 5

    detail = client.get(f"/api/v1/studies/{study_id}").json()
    assert detail["best_trial"]["job_id"] == claimed.id and detail["best_trial"]["value"] == 0.75
    variant = detail["best_trial"]["variant"]
    assert (
        detail["variants"][variant]["counts"]["succeeded"] == 1
        and detail["variants"][variant]["mean"]["estimate"] == 0.75
    )
    assert sum(v["counts"]["queued"] for v in detail["variants"].values()) == 3
    results = client.get(f"/api/v1/studies/{study_id}/results").json()
    assert results["study_id"] == study_id and results["metric"] == "final/accuracy" and results["reference"] == "grpo"
    row = next(r for r in results["variants"] if r["label"] == variant)
    assert {k: row[k] for k in ("n", "mean", "values", "initial_mean", "seeds")} == {
        "n": 1,
        "mean": {"estimate": 0.75, "low": None, "high": None},
        "values": [0.75],
        "initial_mean": None,
        "seeds": [detail["best_trial"]["seed"]],
    }
    assert results["comparisons"] and detail["comparisons"] == results["comparisons"]
    assert all(c["sentence"].startswith("cannot compare") for c in results["comparisons"]), results["comparisons"]


def test_cancel_resume_extend(client: TestClient) -> None:
    study_id = submit(client, spec(name="control")).json()["id"]
    assert client.post(f"/api/v1/studies/{study_id}/cancel").json()["counts"]["cancelled"] == 4
    resumed = client.post(f"/api/v1/studies/{study_id}/resume").json()
    assert resumed["status"] == "running" and resumed["counts"]["queued"] == 4
    refused = client.post(f"/api/v1/studies/{study_id}/extend", json={"n_trials": 2})
    assert refused.status_code == 409 and "search" in refused.json()["message"]
    search = submit(client, SEARCH).json()
    assert search["total"] == 2 and search["counts"]["queued"] == 1
    extended = client.post(f"/api/v1/studies/{search['id']}/extend", json={"n_trials": 3}).json()
    assert extended["total"] == 5
    capped = client.post(f"/api/v1/studies/{search['id']}/extend", json={"n_trials": 999})
    assert capped.status_code == 422 and capped.json()["errors"][0]["path"] == "n_trials"
    assert client.post(f"/api/v1/studies/{search['id']}/extend", json={"n_trials": 0}).status_code == 422


def test_workers(client: TestClient) -> None:
    registry = client.app.state.service.registry
    registry.register("gpu-box-1", hostname="gpu-box", pid=42, gpus=[0, 1], slots=2)
    registry.heartbeat("gpu-box-1", ["job-x"])
    workers = {w["id"]: w for w in client.get("/api/v1/workers").json()["items"]}
    assert workers["gpu-box-1"]["gpus"] == [0, 1] and workers["gpu-box-1"]["current_jobs"] == ["job-x"]
    assert workers["gpu-box-1"]["status"] == "active" and workers["gpu-box-1"]["heartbeat_at"]


def test_a_probe_naming_its_checkpoint_by_trial_is_refused_naming_the_field_when_no_trial_is_found(
    client: TestClient, study: dict[str, Any]
) -> None:
    """The API looks a probe's ``checkpoint: {study, variant, seed, step}`` up in the job database:
    a 422 naming the reference's field, never a 500 (the data-roots check is a string's only)."""
    reference = {"study": "no-such-study", "variant": "grpo", "seed": 0, "step": 4}
    refused = {
        "study": (reference, "no-such-study", "no study 'no-such-study' in the job database"),
        "variant": ({**reference, "study": study["id"], "variant": "nope"}, "nope", "has no variant 'nope'"),
        "seed": ({**reference, "study": study["id"], "seed": 99}, 99, "has no trial of seed 99; its seeds: 0, 1"),
    }
    for field, (checkpoint, value, said) in refused.items():
        response = submit(client, {**PROBE, "name": "by-trial", "checkpoint": checkpoint})
        assert response.status_code == 422, response.text
        [error] = response.json()["errors"]
        assert (error["path"], error["value"], error["type"]) == (f"checkpoint.{field}", value, "checkpoint_not_found")
        assert said in error["message"], error
    unfinished = submit(client, {**PROBE, "name": "by-trial", "checkpoint": {**reference, "study": study["id"]}})
    assert unfinished.status_code == 422 and "not finished: run the study to its end first" in unfinished.text
    outside = submit(client, {**PROBE, "name": "by-path", "checkpoint": "/etc/checkpoint-4"})
    assert outside.status_code == 422 and outside.json()["errors"][0]["type"] == "path_outside_data_roots"


def test_probes_and_not_found(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    for path in [
        "/api/v1/studies/nope",
        "/api/v1/studies/nope/jobs",
        "/api/v1/studies/nope/results",
        "/api/v1/jobs/nope",
        "/nowhere",
    ]:
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path
    assert client.post("/api/v1/studies/nope/cancel").status_code == 404
    assert client.delete("/api/v1/studies").status_code == 405


def test_unexpected_errors_hide_the_traceback(
    client: TestClient, study: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(study_id: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.service, "results", explode)
    with caplog.at_level(logging.ERROR, logger="krpo_bench.api"):
        response = client.get(f"/api/v1/studies/{study['id']}/results", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "message": "internal error; quote the request id to the operator",
        "request_id": "req-123",
        "errors": [],
    }
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] == "req-123"
    assert "req-123" in caplog.text and "secret internals" in caplog.text


def test_dashboard_route_serves_the_study_report(client: TestClient, study: dict[str, Any]) -> None:
    response = client.get(f"/studies/{study['id']}/dashboard")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "has no finished runs" in response.text
    running = client.get(f"/api/v1/studies/{study['id']}").json()["status"] in ("pending", "running")
    assert ('<meta http-equiv="refresh" content="15">' in response.text) == running
    assert client.get("/studies/nope/dashboard").json()["message"] == "no study 'nope'"


def test_optuna_dashboard_is_mounted_read_only(client: TestClient) -> None:
    studies = client.get("/optuna/api/studies")
    assert studies.status_code == 200 and "study_summaries" in studies.json()
    page = client.get("/optuna/dashboard")
    assert page.status_code == 200 and 'src="/optuna/static/bundle.js"' in page.text
    bundle = client.get("/optuna/static/bundle.js").text
    assert 'url_prefix:"/optuna/dashboard"' in bundle and '(null!=e?e:"/optuna")}handleResponse' in bundle
    assert client.get("/optuna/", follow_redirects=False).headers["location"].endswith("/optuna/dashboard")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = client.request(method, "/optuna/api/studies")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_openapi_schema_is_complete(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "StudySpec" in schema["components"]["schemas"]
    body = schema["paths"]["/api/v1/studies"]["post"]["requestBody"]["content"]
    assert (
        set(body) == {"application/json", "application/yaml"}
        and body["application/json"]["example"]["kind"] == "ablation"
    )
    for name in ("StudySummary", "StudyDetail", "StudyPage", "JobDetail", "WorkerOut", "ErrorResponse", "StudyResults"):
        assert schema["components"]["schemas"][name]["examples"], name
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert any(code.startswith("2") for code in operation["responses"]), (method, path)
            assert operation["summary"], (method, path)


def test_python_client(client: TestClient, study: dict[str, Any]) -> None:
    api = Client("http://testserver", http=client)
    made = api.submit(yaml.safe_dump(spec(name="via-client")), idempotency_key="client-1")
    assert api.submit(spec(name="via-client"), idempotency_key="client-1")["id"] == made["id"]
    assert api.get_study(made["id"])["name"] == "via-client"
    assert any(s["id"] == made["id"] for s in api.list_studies(limit=500)["items"])
    assert api.jobs(made["id"])["total"] == 4
    assert api.job(api.jobs(made["id"])["items"][0]["id"])["study_id"] == made["id"]
    assert {v["label"] for v in api.results(made["id"])["variants"]} == {"grpo", "krpo"}
    assert api.cancel(made["id"])["status"] == "cancelled" and api.resume(made["id"])["status"] == "running"
    assert isinstance(api.workers()["items"], list) and api.ready() == {"status": "ready"}
    with pytest.raises(ApiError) as err:
        api.submit(spec(seeds=0))
    assert err.value.status == 422 and err.value.errors[0]["path"] == "seeds" and "seeds" in str(err.value)
    with pytest.raises(ApiError) as err:
        api.extend(made["id"], 1)
    assert err.value.status == 409


def test_data_roots_default_to_a_data_folder_in_the_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    monkeypatch.delenv("KRPO_BENCH_DATA_ROOTS", raising=False)
    assert ApiSettings.from_settings().data_roots == (tmp_path / "data",)  # never the home's own files
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", os.pathsep.join(["/a", "/b"]))
    monkeypatch.setenv("KRPO_BENCH_MAX_TRIALS", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000/")
    settings = ApiSettings.from_settings()
    assert settings.data_roots == (Path("/a"), Path("/b")) and settings.max_trials == 7
    assert settings.mlflow_ui_url == "http://mlflow:5000" and not settings.allow_remote_code


def test_list_cache_shares_work_and_is_cleared_by_writes(client: TestClient) -> None:
    import asyncio

    from krpo_bench.api.routers.studies import PageCache

    calls: list[int] = []

    def compute() -> bytes:
        calls.append(1)
        return str(len(calls)).encode()

    async def scenario() -> None:
        cache = PageCache(ttl=60)
        assert await asyncio.gather(*(cache.get("k", compute) for _ in range(10))) == [b"1"] * 10
        assert await cache.get("k", compute) == b"1" and len(calls) == 1
        cache.clear()
        assert await cache.get("k", compute) == b"2"
        inflight = asyncio.ensure_future(cache.get("k2", compute))
        await asyncio.sleep(0)
        cache.clear()  # a write lands while the page is computed: that page is not kept
        assert await inflight == b"3" and await cache.get("k2", compute) == b"4"

    asyncio.run(scenario())
    cache = client.app.state.list_cache
    cache.ttl = 60
    try:
        before = client.get("/api/v1/studies", params={"limit": 1}).json()["items"][0]["id"]
        made = submit(client, spec(name="fresh")).json()["id"]
        assert made != before
        assert client.get("/api/v1/studies", params={"limit": 1}).json()["items"][0]["id"] == made
    finally:
        cache.ttl = 0


def test_readyz_reports_an_unreachable_database(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    def down(**_: Any) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(client.app.state.service, "list", down)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["error"] == "service_unavailable"
    assert client.get("/healthz").status_code == 200
