"""Issue 14: what a hostile holder of a submit token tried, replayed against a real ``krpo-bench
serve`` on loopback (and, where the finding is about code behind it, against that code directly).
Each test fails on the code before the fix: a name written as a path, a packaged dataset builder
reading the worker's files, unbounded validation and scheduling work inside a request, half-stored
studies, unbounded numbers, leaked tracebacks, the data home as a data root, a token-less server
that stays open, spreadsheet formulas and live HTML in reports, the Optuna mount, Idempotency-Key."""

from __future__ import annotations

import copy
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import datasets
import httpx
import numpy as np
import pytest
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.auth import TokenStore, is_loopback_host
from krpo_bench.api.settings import ApiSettings
from krpo_bench.dashboards import build_report, load_study
from krpo_bench.dashboards.figures import cost_figure, curve_figure, final_figure
from krpo_bench.dashboards.report import csv_cell
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from krpo_bench import tracking
from krpo_bench.service.studies import experiment_name
from krpo_bench.service.worker import short_reason
from krpo_bench.tasks import hf
from krpo_bench.tasks.config import PACKAGED_BUILDERS, HFTask
from tests.api.test_api import BASE, SEARCH, SPEC
from tests.api.test_api_server import start, stop


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out.update(changes)
    return out


def with_task(task: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return spec(base={**BASE, "task": task}, **changes)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A server with tokens of each scope and the default data roots (``<home>/data``)."""
    home = tmp_path_factory.mktemp("hostile")
    store = TokenStore(home / "tokens.json")
    tokens = {scope: store.create(scope, [scope])[0] for scope in ("read", "submit", "admin")}
    proc, url = start(home)
    yield url, tokens, home
    output = stop(proc)
    assert "Traceback" not in output, output


def post(
    url: str, token: str | None, body: dict[str, Any] | bytes, content_type: str = "application/json", **headers: str
) -> httpx.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{url}/api/v1/studies", content=content, headers={"Content-Type": content_type, **headers}, timeout=600
    )


def error_paths(response: httpx.Response) -> list[str]:
    return [e["path"] for e in response.json()["errors"]]


def study_count(url: str, token: str) -> int:
    response = httpx.get(f"{url}/api/v1/studies", params={"limit": 500}, headers={"Authorization": f"Bearer {token}"})
    return len(response.json()["items"])


# -- 1. a study name is display text, never a path ------------------------------------------------


def test_a_study_name_never_becomes_a_path(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, home = server
    marker = f"evil-{uuid.uuid4().hex[:12]}"
    names = [f"../../../../tmp/{marker}", f"../tokens.json.tmp/{marker}", f"/{marker}/x", f"{marker} [x]\\..\\.."]
    mlflow = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    for name in names:
        response = post(url, tokens["submit"], spec(name=name))
        assert response.status_code == 201, response.text
        study = response.json()
        assert study["name"] == name
        deadline = time.monotonic() + 60
        while study["mlflow_experiment_id"] is None and time.monotonic() < deadline:  # MLflow records follow the POST
            time.sleep(0.2)
            study = httpx.get(
                f"{url}/api/v1/studies/{study['id']}", headers={"Authorization": f"Bearer {tokens['read']}"}
            ).json()
        experiment = mlflow.get_experiment(study["mlflow_experiment_id"])
        assert experiment.name == experiment_name(study["id"], name)  # display text; its artifact folder is a hash
        assert experiment.tags["krpo.study_name"] == name  # still shown, as display text
        folder = Path(urlparse(experiment.artifact_location).path)
        assert folder == home / "mlartifacts" / tracking.artifact_folder(experiment.name)
        assert list(folder.glob("*/artifacts/study.json")), "the study's artifacts lie in its id's folder"
    assert not list(Path("/tmp").glob(f"{marker}*")), "nothing was written outside the data home"
    assert not [p for p in home.rglob("*") if marker in p.name], "no file or folder is named after a study"
    assert not (home / "tokens.json.tmp").exists()
    token, record = TokenStore(home / "tokens.json").create("after", ["read"])  # the token file still works
    assert TokenStore(home / "tokens.json").revoke(record.id) == 1


def test_experiment_artifact_folders_are_one_plain_path_component() -> None:
    from krpo_bench.tracking import artifact_folder

    assert (
        artifact_folder("krpo-study-0b8c2f6e-5b1a-4a52-9d0e-3f3f9a1c2d4e")
        == "krpo-study-0b8c2f6e-5b1a-4a52-9d0e-3f3f9a1c2d4e"
    )
    for name in ("../../../../tmp/evil", "a/b", "..", "x\\..\\y", "evil [1234]", "", "-rf", "a" * 200):
        folder = artifact_folder(name)
        assert folder.startswith("experiment-") and "/" not in folder and "\\" not in folder and ".." not in folder, (
            name
        )
    assert artifact_folder("a/b") != artifact_folder("a/c")


# -- 2. a dataset is a hub id or a saved folder under the data roots, checked again on the worker -


@pytest.mark.parametrize(
    "dataset", ["text", "json", "csv", "parquet", "imagefolder", "json/credentials", "./secrets", "org/../name", "data"]
)
def test_packaged_builders_and_relative_paths_are_refused_at_submit(
    server: tuple[str, dict[str, str], Path], dataset: str
) -> None:
    url, tokens, _ = server
    task = {
        "kind": "hf",
        "dataset": dataset,
        "question_field": "text",
        "answer_field": "text",
        "answer_extract": "gsm8k",
    }
    response = post(url, tokens["submit"], with_task(task))
    assert response.status_code == 422, response.text
    assert any(p.endswith("task.hf.dataset") for p in error_paths(response)), response.text


def test_the_spec_time_builder_list_covers_the_installed_datasets() -> None:
    assert set(_PACKAGED_DATASETS_MODULES) <= PACKAGED_BUILDERS


def forged(dataset: str, **fields: Any) -> HFTask:
    """An HFTask as a job forged in the database would carry it: never validated."""
    return HFTask.model_construct(kind="hf", dataset=dataset, **fields)


def test_the_worker_refuses_builders_folders_here_and_folders_outside_the_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "credentials").write_text("password=hunter2\n")
    (tmp_path / "org" / "name").mkdir(parents=True)
    roots = (tmp_path / "data",)
    for source, reason in [
        ("text", "expected a hub id"),
        ("json/x", "packaged file builders"),
        ("org/name", "working directory"),
        (str(tmp_path / "outside"), "not under the data roots"),
    ]:
        with pytest.raises(hf.DatasetRefused, match=reason) as refused:
            hf.load(forged(source), roots)
        assert str(refused.value).startswith("task.dataset: ") and "hunter2" not in str(refused.value)
    datasets.Dataset.from_dict({"question": ["1+1"], "answer": ["2"]}).save_to_disk(str(tmp_path / "outside"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(hf.DatasetRefused, match="not under the data roots"):
        hf.load(forged(str(tmp_path / "data" / "link")), roots)
    with pytest.raises(hf.DatasetRefused, match="its link 'link' leads out of them"):  # a folder holding that link
        hf.load(forged(str(tmp_path / "data")), roots)
    train, test = hf.load(
        forged(
            str(tmp_path / "data" / "link"),
            question_field="question",
            answer_field="answer",
            answer_extract="none",
            split="train",
            test_split=None,
        ),
        (tmp_path,),
    )
    assert train == [{"question": "1+1", "answer": "2", "prompt_id": 0}] and test is None


def test_row_errors_name_the_row_not_its_value(tmp_path: Path) -> None:
    folder = tmp_path / "leaky"
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["aws_secret=AKIA-LEAK"]}).save_to_disk(str(folder))
    with pytest.raises(ValueError) as err:
        hf.load(
            forged(
                str(folder),
                question_field="question",
                answer_field="answer",
                answer_extract="gsm8k",
                split="train",
                test_split=None,
            ),
            (tmp_path,),
        )
    assert "row 0" in str(err.value) and "AKIA" not in str(err.value)


# -- 3. validation work is bounded before anything is expanded ------------------------------------


def test_an_empty_grid_axis_is_refused_before_any_expansion(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, _ = server
    body = spec(
        variants={f"v{i}": {"estimator": {"name": "grpo"}} for i in range(1000)},
        grid={"training.group_size": [], "training.max_steps": list(range(1, 1001))},
    )
    started = time.perf_counter()
    response = post(url, tokens["submit"], body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 422 and "grid.training.group_size" in error_paths(response), response.text
    assert elapsed < 5, f"{elapsed:.1f} s: a million trial configs were validated"


# -- 4. search parallelism is capped and trials are asked outside the request ---------------------


def test_search_parallelism_is_capped_and_the_post_asks_only_that_many(
    server: tuple[str, dict[str, str], Path],
) -> None:
    url, tokens, _ = server
    search = {**SEARCH, "n_trials": 1000, "parallelism": 1024, "sampler": "tpe"}
    response = post(url, tokens["submit"], search)
    assert response.status_code == 422 and error_paths(response) == ["parallelism"], response.text
    started = time.perf_counter()
    response = post(url, tokens["submit"], {**search, "parallelism": 64})
    elapsed = time.perf_counter() - started
    assert response.status_code == 201, response.text
    assert response.json()["counts"]["queued"] == 64 and response.json()["total"] == 1000
    print(f"\nPOST of a search with n_trials=1000, parallelism=64: {elapsed:.1f} s")


# -- 5. submission is all or nothing; every number has a bound its storage accepts ----------------


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"sampler_seed": 2**40}, "sampler_seed"),
        (
            {"base": {**BASE, "model": {"name": "tiny-arith", "tiny": {"hidden_size": 2**40}}}},
            "base.model.tiny.hidden_size",
        ),
        ({"seeds": [0, 2**63]}, "seeds"),
        ({"base": {**BASE, "training": {"max_steps": 5, "seed": 2**70}}}, "base.training.seed"),
        ({"pruner": {"type": "median", "warmup_steps": 2**63}}, "pruner.warmup_steps"),
    ],
)
def test_out_of_range_numbers_are_refused_and_nothing_is_stored(
    server: tuple[str, dict[str, str], Path], change: dict[str, Any], path: str
) -> None:
    url, tokens, _ = server
    before = study_count(url, tokens["read"])
    body = {**SEARCH, **change} if "sampler_seed" in change or "pruner" in change else spec(**change)
    response = post(url, tokens["submit"], body, **{"Idempotency-Key": f"bound-{path}"})
    assert response.status_code == 422 and any(path in p for p in error_paths(response)), response.text
    assert study_count(url, tokens["read"]) == before


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


def test_a_submission_that_fails_late_leaves_nothing_and_a_retry_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with local_app(tmp_path) as client:
        service = client.app.state.service
        enqueue = service.queue.create_study
        monkeypatch.setattr(
            service.queue, "create_study", lambda *a, **k: (_ for _ in ()).throw(OverflowError("int too big"))
        )
        failed = client.post("/api/v1/studies", json=SPEC, headers={"Idempotency-Key": "k1"})
        assert failed.status_code == 500 and "int too big" not in failed.text
        assert service.list() == [], "no study row is left behind"
        mlflow = MlflowClient(service.mlflow_uri)
        assert all(
            e.lifecycle_stage == "deleted"
            for e in mlflow.search_experiments(view_type=3)
            if e.name.startswith("krpo-study-")
        )
        monkeypatch.setattr(service.queue, "create_study", enqueue)
        retried = client.post("/api/v1/studies", json=SPEC, headers={"Idempotency-Key": "k1"})
        assert retried.status_code == 201, retried.text
        assert retried.json()["counts"]["queued"] == 4 and len(service.list()) == 1


# -- 6. model size by server policy; priority above the default only for admins -------------------


def test_model_size_is_capped_by_the_server_setting(tmp_path: Path) -> None:
    tiny = {"name": "tiny-arith", "tiny": {"hidden_size": 1024, "num_layers": 64, "num_heads": 8}}
    body = spec(base={**BASE, "model": tiny})
    with local_app(tmp_path / "small", max_model_params=10_000_000) as client:
        refused = client.post("/api/v1/studies", json=body)
        assert refused.status_code == 422 and error_paths(refused) == ["base.model.tiny"], refused.text
        assert "KRPO_BENCH_MAX_MODEL_PARAMS" in refused.json()["errors"][0]["message"]
        assert client.post("/api/v1/studies", json=SPEC).status_code == 201  # the default tiny model fits
    with local_app(tmp_path / "large", max_model_params=10**10) as client:
        assert client.post("/api/v1/studies", json=body).status_code == 201


def test_only_admin_tokens_raise_priority(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, _ = server
    refused = post(url, tokens["submit"], spec(priority=1000))
    assert refused.status_code == 403 and "priority" in refused.json()["message"], refused.text
    assert post(url, tokens["submit"], spec(priority=-5)).status_code == 201
    assert post(url, tokens["admin"], spec(priority=1000)).json()["priority"] == 1000


# -- 7. NUL bytes and huge integers are client errors ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "path"),
    [
        (json.dumps(spec(name="a\x00b")).encode(), "application/json", "name"),
        (
            json.dumps(with_task({"kind": "jsonl", "path": "/data/q\x00.jsonl"})).encode(),
            "application/json",
            "base.task.path",
        ),
        (
            json.dumps(spec(variants={"gr\x00po": {"estimator": {"name": "grpo"}}})).encode(),
            "application/json",
            "variants",
        ),
        (
            b"name: t\nkind: ablation\nbase: {task: {kind: arithmetic}}\npriority: " + b"9" * 5000 + b"\n",
            "application/yaml",
            "",
        ),
        (b'{"name": "t", "kind": "ablation", "base": {}, "priority": ' + b"9" * 5000 + b"}", "application/json", ""),
    ],
)
def test_nul_bytes_and_huge_integers_are_422(
    server: tuple[str, dict[str, str], Path], body: bytes, content_type: str, path: str
) -> None:
    url, tokens, _ = server
    response = post(url, tokens["submit"], body, content_type)
    assert response.status_code == 422, response.text
    assert any(p.startswith(path) for p in error_paths(response)), response.text


# -- 8 and 2. a failing job shows a one-line reason, no traceback and no data ---------------------


@pytest.mark.slow
def test_a_failed_job_shows_a_short_reason_without_data_or_traceback(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    folder = tmp_path / "data" / "leaky"
    rows = {"question": [f"q{i}" for i in range(20)], "answer": [f"password=SECRET-{i}" for i in range(20)]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    proc, url = start(tmp_path, "--workers", "1")
    try:
        task = {
            "kind": "hf",
            "dataset": str(folder),
            "test_split": None,
            "answer_extract": "gsm8k",
            "rewards": [{"name": "exact"}],
        }
        body = with_task(task, seeds=1, variants=None, resources={"max_attempts": 1})
        study = post(url, None, body).json()
        deadline = time.monotonic() + 240
        job = None
        while time.monotonic() < deadline:
            jobs = httpx.get(f"{url}/api/v1/studies/{study['id']}/jobs").json()["items"]
            if jobs and jobs[0]["status"] == "failed":
                job = httpx.get(f"{url}/api/v1/jobs/{jobs[0]['id']}").json()
                break
            time.sleep(1)
        assert job is not None, "the job did not fail in time"
    finally:
        output = stop(proc)
    reasons = [job["last_error"], *(a["error"] for a in job["attempts"])]
    for reason in reasons:
        assert reason and "\n" not in reason and len(reason) <= 500, reason
        assert "SECRET" not in reason and "Traceback" not in reason and 'File "' not in reason, reason
    assert "task.answer_extract: row " in job["last_error"], job["last_error"]
    assert "Traceback" in output, "the traceback stays in the server's (worker's) log"


def test_short_reason_keeps_the_first_line_only() -> None:
    assert short_reason('ValueError: bad\nTraceback (most recent call last):\n  File "/srv/x.py"') == "ValueError: bad"
    assert len(short_reason("x" * 10_000)) == 500 and short_reason("") == "unknown error"


# -- 9. the default data root is a folder of its own ----------------------------------------------


def test_the_data_homes_own_files_are_outside_the_default_data_root(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, home = server
    for name in ("tokens.json", "mlflow.db", "jobs.db"):
        response = post(url, tokens["submit"], with_task({"kind": "jsonl", "path": str(home / name)}))
        assert response.status_code == 422 and response.json()["errors"][0]["type"] == "path_outside_data_roots", (
            response.text
        )
    (home / "data").mkdir(exist_ok=True)
    (home / "data" / "q.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    assert (
        post(url, tokens["submit"], with_task({"kind": "jsonl", "path": str(home / "data" / "q.jsonl")})).status_code
        == 201
    )


# -- 10. a token-less server: closed once a token exists, and only for loopback Host names ---------


def test_a_tokenless_server_checks_host_and_closes_when_a_token_is_created(tmp_path: Path) -> None:
    proc, url = start(tmp_path)
    port = urlparse(url).port
    try:
        assert httpx.get(f"{url}/api/v1/studies").status_code == 200
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert httpx.get(f"{url}/api/v1/studies", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "attacker.localhost.evil.example", f"10.0.0.1:{port}"):
            rebound = httpx.get(f"{url}/api/v1/studies", headers={"Host": host})
            assert rebound.status_code == 403 and "loopback" in rebound.json()["message"], host
        assert httpx.get(f"{url}/optuna/api/studies", headers={"Host": "evil.example"}).status_code == 403
        token, _ = TokenStore(tmp_path / "tokens.json").create("late", ["read"])
        assert httpx.get(f"{url}/api/v1/studies").status_code == 401, "the new token is required at once"
        assert httpx.get(f"{url}/api/v1/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert "HTTPBearer" in json.dumps(httpx.get(f"{url}/openapi.json").json()["components"])
    finally:
        stop(proc)


def test_a_tokenless_server_refuses_peers_that_are_not_loopback(tmp_path: Path) -> None:
    with local_app(tmp_path) as client:
        assert client.get("/api/v1/studies").status_code == 200
    config = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path / "data",),
    )
    with TestClient(create_app(config), base_url="http://localhost", client=("192.0.2.7", 4000)) as remote:
        for path in ("/api/v1/studies", "/optuna/api/studies"):
            assert remote.get(path).status_code == 403, path  # e.g. a public bind whose tokens were all revoked


def test_loopback_host_names() -> None:
    for host in (
        "localhost",
        "LOCALHOST:8000",
        "127.0.0.1",
        "127.1.2.3:80",
        "[::1]",
        "[::1]:8000",
        "a.localhost",
        "localhost.",
    ):
        assert is_loopback_host(host), host
    for host in ("", "evil.example", "localhost.evil.example", "10.0.0.1", "[::2]:80", "0.0.0.0", "127.0.0.1.nip.io"):
        assert not is_loopback_host(host), host


# -- 11. reports: no spreadsheet formulas, no live HTML in plotly labels ---------------------------

FORMULA = '=HYPERLINK("http://evil.example","x")'
MARKUP = '<a href="http://evil.example">click</a>'


def test_csv_cells_never_start_a_formula() -> None:
    for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(cell) == "'" + cell
    assert csv_cell("grpo") == "grpo" and csv_cell(-1.5) == -1.5 and csv_cell("a=b") == "a=b"


def test_reports_neutralise_hostile_variant_names(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
    for variant in ("grpo", FORMULA, MARKUP):
        for seed in range(2):
            run = client.create_run(experiment).info.run_id
            tags = {"krpo.study_id": "s1", "krpo.variant": variant, "krpo.seed": str(seed), "krpo.kind": "ablation"}
            client.log_batch(
                run,
                metrics=[
                    Metric("final/accuracy", 0.4 + 0.1 * seed, 0, 10),
                    Metric("eval/accuracy", 0.3, 0, 5),
                    Metric("train/reward", 0.2, 0, 5),
                ],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            client.set_terminated(run)
    report = build_report(load_study(uri, study_id="s1"), tmp_path / "report")
    cells = [line.split(",")[0] for line in report.csv_path.read_text().splitlines()[1:]]
    assert not any(cell.lstrip('"').startswith("=") for cell in cells), cells
    assert any(cell.lstrip('"').startswith("'=HYPERLINK") for cell in cells), cells
    page = report.html_path.read_text()
    assert MARKUP not in page, "the page shows the name as text"
    assert '"name":"\\u003ca' not in page and '"name":"&lt;a href' in page, "plotly draws it as text, not a link"


def test_plotly_labels_are_escaped() -> None:
    import pandas as pd
    from krpo_bench.dashboards.curves import aggregate_curve

    from krpo_bench.stats import Interval

    colors = {MARKUP: "#636efa"}
    curve = aggregate_curve({0: pd.Series([0.1, 0.2], index=[0, 1]), 1: pd.Series([0.2, 0.3], index=[0, 1])})
    interval = Interval(0.5, 0.4, 0.6)
    frame = pd.DataFrame({"variant": [MARKUP], "cost/wall_time_s": [1.0]})
    for figure in (
        curve_figure({MARKUP: curve}, "t", colors),
        final_figure({MARKUP: np.array([0.5])}, {MARKUP: interval}, colors, "m"),
        cost_figure(frame, ["cost/wall_time_s"], colors),
    ):
        labels = [t.name for t in figure.data] + [str(x) for t in figure.data for x in (t.x if t.x is not None else [])]
        assert not any("<a" in label for label in labels), labels
        assert any("&lt;a href" in label for label in labels), labels


# -- 12. the Optuna mount ---------------------------------------------------------------------------


def test_optuna_without_optuna_dashboard_is_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # importing it raises ImportError
    with local_app(tmp_path) as client:
        response = client.get("/optuna/")
        assert response.status_code == 503 and "optuna-dashboard" in response.json()["message"], response.text


def test_optuna_redirects_ignore_host_and_forwarded_host(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, _ = server
    headers = {
        "Authorization": f"Bearer {tokens['read']}",
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }
    response = httpx.get(f"{url}/optuna/", headers=headers, follow_redirects=False)
    assert response.status_code in (301, 302, 303, 307, 308), response.text
    assert response.headers["location"] == "/optuna/dashboard"


# -- 13. Idempotency-Key: bounded, not echoed whole, scoped per token ------------------------------


def test_long_idempotency_keys_are_refused_without_being_echoed(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, _ = server
    assert post(url, tokens["submit"], SPEC, **{"Idempotency-Key": "k" * 200}).status_code == 201
    for length in (201, 100_000):
        key = "k" * (length - 6) + "SECRET"
        try:
            response = post(url, tokens["submit"], SPEC, **{"Idempotency-Key": key})
        except httpx.ReadError:
            # uvicorn answers a header block over its limit with 400 and closes at once; on a busy
            # machine the close can reach the client before that answer: refused, nothing echoed
            assert length > 16_384
            continue
        assert 400 <= response.status_code < 500, response.status_code
        assert "SECRET" not in response.text and len(response.text) < 2000, response.text[:300]
    assert post(url, tokens["submit"], SPEC, **{"Idempotency-Key": "k" * 200}).status_code == 201, (
        "the server is still up"
    )


def test_idempotency_keys_are_scoped_per_token(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, _ = server
    key = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    mine = post(url, tokens["submit"], SPEC, **key).json()
    assert post(url, tokens["submit"], SPEC, **key).json()["id"] == mine["id"]
    theirs = post(url, tokens["admin"], SPEC, **key)
    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]


# -- issue 19, items 1-3 and 9: names are data (no markup, no escapes, no NUL 500s) ---------------
# The worker that claims a markup-named job and survives: tests/spec/test_display_safety.py.


def test_markup_names_are_stored_as_text_and_control_characters_are_refused_in_every_name(
    server: tuple[str, dict[str, str], Path],
) -> None:
    url, tokens, _ = server
    poison = post(
        url, tokens["submit"], spec(name="[/]", variants={"[/]": {}, "[link=https://evil.example]x[/link]": {}})
    )
    assert poison.status_code == 201, poison.text
    assert poison.json()["name"] == "[/]"
    forged = "x\x1b[2K\rworker: all trials succeeded"
    before = study_count(url, tokens["read"])
    for body, path in [
        (spec(variants={forged: {}}), "variants.x\\x1b[2K\\rworker: all trials succeeded"),
        (spec(grid={"training.lr_scheduler": ["\x1b]52;c;aGk=\x07"]}), "grid.training.lr_scheduler[0]"),
        (spec(base={**BASE, "name": "n", "experiment": "e\u202e"}), "base.experiment"),
    ]:
        response = post(url, tokens["submit"], body)
        assert response.status_code == 422 and path in error_paths(response), response.text
    assert study_count(url, tokens["read"]) == before


def test_paths_holding_nul_or_control_characters_are_404(server: tuple[str, dict[str, str], Path]) -> None:
    url, tokens, _ = server
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    for path in (
        "/api/v1/studies/%00",
        "/api/v1/jobs/%00",
        "/api/v1/studies/a%00b/jobs",
        "/studies/%00/dashboard",
        "/api/v1/studies/%1B%5B2K",
    ):
        response = httpx.get(f"{url}{path}", headers=headers)
        assert response.status_code == 404, (path, response.text)
    assert httpx.post(f"{url}/api/v1/studies/%00/cancel", headers=headers).status_code == 404


# -- issue 19, items 7 and 8: cross-site requests; workers re-check local paths where they open them --


def test_a_page_of_another_origin_cannot_cancel_or_resume_on_a_tokenless_server(tmp_path: Path) -> None:
    proc, url = start(tmp_path)
    try:
        study = post(url, None, spec(name="victim")).json()
        evil = {
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        for ref in (study["id"], "victim", "v"):
            for action in ("cancel", "resume"):
                refused = httpx.post(
                    f"{url}/api/v1/studies/{ref}/{action}", headers=evil, content=b"confirm=1", timeout=60
                )
                assert refused.status_code == 403 and refused.json()["error"] == "cross_site_request", refused.text
                assert "https://evil.example" in refused.json()["message"]
        assert httpx.get(f"{url}/api/v1/studies/{study['id']}", timeout=60).json()["status"] == "running"
        own = httpx.post(
            f"{url}/api/v1/studies/{study['id']}/cancel",
            headers={"Origin": url, "Sec-Fetch-Site": "same-origin"},
            timeout=60,
        )
        assert own.status_code == 200 and own.json()["status"] == "cancelled", own.text
        assert (
            httpx.post(f"{url}/api/v1/studies/{study['id']}/resume", timeout=60).status_code == 200
        )  # the CLI sends no Origin
    finally:
        stop(proc)


def test_a_jsonl_link_repointed_after_submission_is_refused_by_the_worker(
    server: tuple[str, dict[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, tokens, home = server
    (home / "data").mkdir(exist_ok=True)
    (home / "data" / "good.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    (home / "secret.jsonl").write_text('{"aws_secret_access_key": "AKIA-LEAK"}\n')
    link = home / "data" / "repointed.jsonl"
    link.symlink_to(home / "data" / "good.jsonl")
    accepted = post(
        url, tokens["submit"], with_task({"kind": "jsonl", "path": str(link), "rewards": [{"name": "exact"}]})
    )
    assert accepted.status_code == 201, accepted.text
    link.unlink()
    link.symlink_to(home / "secret.jsonl")
    monkeypatch.setenv("KRPO_BENCH_DATA_ROOTS", str(home / "data"))  # the worker's own data roots
    from krpo_bench.tasks import build_task  # what the worker calls

    task = accepted.json()["spec"]["base"]["task"]
    with pytest.raises(PermissionError, match="not under the data roots") as refused:
        build_task(task)
    reason = short_reason(f"{type(refused.value).__name__}: {refused.value}")
    assert reason.startswith("OutsideDataRoots: task.path: ") and "aws_secret" not in reason and "AKIA" not in reason


@pytest.mark.parametrize("name", ["hf:./evil/model", "hf:evil/model/checkpoint-1", "hf:../evil"])
def test_relative_model_paths_are_refused_at_submit(server: tuple[str, dict[str, str], Path], name: str) -> None:
    url, tokens, _ = server
    response = post(url, tokens["submit"], spec(base={**BASE, "model": {"name": name}}))
    assert response.status_code == 422 and error_paths(response) == ["base.model.name"], response.text
    assert "absolute path" in response.json()["errors"][0]["message"]
