"""Settings: one object over every environment variable the project reads, an optional config file
(KRPO_BENCH_CONFIG) under them, embedded-mode defaults, `krpo-bench config`, and README's table."""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from krpo_bench import settings as ks
from krpo_bench.settings import ENV_VARS, Settings, SettingsError
from tests.trial_specs import TINY_TASK, tiny_ablation

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("krpo_bench", "api", "dashboards") for p in (ROOT / folder).rglob("*.py")]


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No krpo-bench variable set; the data home in a temporary folder."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("KRPO_BENCH_HOME", str(home))
    return home


def test_defaults_make_the_embedded_mode_work(tmp_path: Path) -> None:
    s = Settings.load({})
    home = Path.home() / ".krpo-bench"
    assert s.home == home and s.config_file is None
    assert s.db == f"sqlite:///{home / 'krpo-bench.db'}" and s.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert s.data_roots == (home / "data",) and s.api_tokens_file == home / "api-tokens.json"
    assert (s.allow_remote_code, s.max_trials, s.max_body_bytes, s.cpu_threads, s.mlflow_ui_url) == (
        False,
        1000,
        1_000_000,
        None,
        None,
    )
    assert set(s.sources.values()) == {"default"}
    moved = Settings.load({"KRPO_BENCH_HOME": str(tmp_path)})
    assert moved.db == f"sqlite:///{tmp_path / 'krpo-bench.db'}" and moved.data_roots == (tmp_path / "data",)


def test_legacy_functions_read_the_settings(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ks.data_home() == clean_env and clean_env.is_dir()
    assert ks.default_db_url() == f"sqlite:///{clean_env / 'krpo-bench.db'}"
    assert ks.default_mlflow_uri() == f"sqlite:///{clean_env / 'mlflow.db'}"
    assert ks.cache_dir("models") == clean_env / "cache" / "models"
    assert ks.default_artifact_root() == (clean_env / "mlartifacts").as_uri()
    monkeypatch.setenv("KRPO_BENCH_DB", "postgresql://u@h/db")  # a change is seen at once
    assert ks.default_db_url() == "postgresql://u@h/db"


def test_config_file_under_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "etc" / "krpo-bench.toml"
    config.parent.mkdir()
    config.write_text(
        'db = "postgresql://krpo@db/krpo"\nmax_trials = 50\nallow_remote_code = true\n'
        'data_roots = ["datasets", "/srv/models"]\nmlflow_tracking_uri = "http://mlflow:5000/"\n'
    )
    monkeypatch.setenv("KRPO_BENCH_CONFIG", str(config))
    monkeypatch.setenv("KRPO_BENCH_MAX_TRIALS", "7")
    s = ks.get_settings()
    assert s.config_file == config and s.db == "postgresql://krpo@db/krpo" and s.allow_remote_code is True
    assert s.max_trials == 7 and s.sources["max_trials"] == "env KRPO_BENCH_MAX_TRIALS"
    assert s.sources["db"] == f"file {config}" and s.sources["home"] == "env KRPO_BENCH_HOME"
    assert s.data_roots == (config.parent / "datasets", Path("/srv/models")), "relative paths are relative to the file"
    assert s.mlflow_ui_url == "http://mlflow:5000", "the UI defaults to an http tracking URI"
    assert ks.default_db_url() == "postgresql://krpo@db/krpo", "the old entry points follow the file too"
    config.write_text('db = "postgresql://krpo@other/krpo"\n# edited\n')
    assert ks.default_db_url() == "postgresql://krpo@other/krpo", "an edited file is re-read"


def test_yaml_config_file(tmp_path: Path) -> None:
    config = tmp_path / "krpo.yaml"
    config.write_text("home: data\ncpu_threads: 3\nlist_cache_s: 0\n")
    s = Settings.load({"KRPO_BENCH_CONFIG": str(config)})
    assert s.home == tmp_path / "data" and s.cpu_threads == 3 and s.list_cache_s == 0.0
    assert s.db == f"sqlite:///{tmp_path / 'data' / 'krpo-bench.db'}"


@pytest.mark.parametrize(
    ("environ", "file_text", "needle"),
    [
        ({"KRPO_BENCH_MAX_TRIALS": "many"}, None, "KRPO_BENCH_MAX_TRIALS"),
        ({"KRPO_BENCH_CPU_THREADS": "0"}, None, "KRPO_BENCH_CPU_THREADS"),
        ({"KRPO_BENCH_ALLOW_REMOTE_CODE": "maybe"}, None, "KRPO_BENCH_ALLOW_REMOTE_CODE"),
        ({"KRPO_BENCH_LIST_CACHE_S": "-1"}, None, "KRPO_BENCH_LIST_CACHE_S"),
        ({}, "max_trails = 5\n", "max_trails"),
        ({}, "max_trials = 'five'\n", "max_trials"),
        ({}, "data_roots = 3\n", "data_roots"),
        ({}, "not toml [", "cannot parse"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path: Path, environ: dict, file_text: str | None, needle: str) -> None:
    if file_text is not None:
        config = tmp_path / "c.toml"
        config.write_text(file_text)
        environ = {**environ, "KRPO_BENCH_CONFIG": str(config)}
    with pytest.raises(SettingsError, match=re.escape(needle)):
        Settings.load(environ)


def test_config_file_must_exist_and_be_toml_or_yaml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load({"KRPO_BENCH_CONFIG": str(tmp_path / "missing.toml")})
    (tmp_path / "c.ini").write_text("[x]\n")
    with pytest.raises(SettingsError, match=r"\.toml, \.yaml"):
        Settings.load({"KRPO_BENCH_CONFIG": str(tmp_path / "c.ini")})


READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\(|envvar=)\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_every_krpo_bench_variable_is_a_setting() -> None:
    named = {name for path in SOURCES for name in re.findall(r"\bKRPO_BENCH_[A-Z0-9_]+\b", path.read_text())}
    assert {"KRPO_BENCH_HOME", "KRPO_BENCH_DB", "KRPO_BENCH_CPU_THREADS"} <= named
    missing = named - set(ENV_VARS)
    assert not missing, f"named by the code but not in krpo_bench.settings.VARS (and README): {sorted(missing)}"


def test_only_the_settings_module_reads_setting_variables() -> None:
    """Everything else asks ``get_settings()``, so a value from the config file is honoured too."""
    readers = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in SOURCES
        if path != ROOT / "krpo_bench" / "settings.py"
        for name in READ.findall(path.read_text())
        if name in ENV_VARS
    }
    assert not readers, f"read from the environment behind the settings' back: {sorted(readers)}"


def test_readme_settings_table_lists_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    for name in ENV_VARS:
        assert f"`{name}`" in section, f"README's Settings section does not list {name}"


def test_readme_settings_table_is_the_settings_table() -> None:
    """Each README row names the variable, file key and (for numbers and switches) default of ``VARS``,
    and those defaults are the ones :class:`Settings` applies."""
    section = (ROOT / "README.md").read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in ENV_VARS:
            rows[cells[0]] = (cells[1], cells[2])
    assert set(rows) == set(ENV_VARS)
    defaults = Settings.load({})
    for var in ks.VARS:
        key, default = rows[var.env]
        assert key == var.key, f"README names {var.env}'s file key {key!r}, the settings {var.key!r}"
        value = getattr(defaults, var.key)
        if isinstance(value, bool):
            assert default == var.default == str(value).lower(), var.env
        elif isinstance(value, (int, float)):
            assert float(default) == float(var.default) == value, var.env


def test_api_settings_agree_with_settings(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from krpo_bench.api.settings import ApiSettings

    for name, value in {
        "KRPO_BENCH_DB": "sqlite:///x.db",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "KRPO_BENCH_DATA_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
        "KRPO_BENCH_MAX_TRIALS": "9",
        "KRPO_BENCH_ALLOW_REMOTE_CODE": "yes",
        "KRPO_BENCH_MAX_BODY_BYTES": "1234",
        "KRPO_BENCH_API_TOKENS_FILE": str(tmp_path / "t.json"),
        "KRPO_BENCH_LIST_CACHE_S": "0.5",
    }.items():
        monkeypatch.setenv(name, value)
    api, s = ApiSettings.from_settings(), Settings.load()
    assert (api.db, api.mlflow_tracking_uri, api.api_tokens_file, api.data_roots) == (
        s.db,
        s.mlflow_tracking_uri,
        s.api_tokens_file,
        s.data_roots,
    )
    assert (api.allow_remote_code, api.max_trials, api.max_body_bytes, api.list_cache_s, api.mlflow_ui_url) == (
        s.allow_remote_code,
        s.max_trials,
        s.max_body_bytes,
        s.list_cache_s,
        s.mlflow_ui_url,
    )
    assert all(getattr(api, f.name) == getattr(s, f.name) for f in fields(ApiSettings))
    served = ApiSettings.from_settings(s, db="postgresql://u@h/db", mlflow_tracking_uri="http://tracking:5000/")
    assert (served.db, served.mlflow_tracking_uri, served.max_trials) == (
        "postgresql://u@h/db",
        "http://tracking:5000/",
        9,
    )
    assert served.mlflow_ui_url == "http://tracking:5000", (
        "an http tracking URI given on the command line is the UI base"
    )


def test_server_views_have_the_settings_names_types_and_defaults() -> None:
    """``ApiSettings``, ``Policy`` and ``Quotas`` are views of :class:`Settings`: each of their fields is
    the setting of the same name, type and default, so ``settings_view`` fills them by name."""
    from krpo_bench.api.policy import Policy
    from krpo_bench.api.settings import ApiSettings

    from krpo_bench.service.quotas import Quotas

    own = {f.name: f for f in fields(Settings)}
    assert [v.key for v in ks.VARS] == [name for name in own if name not in ("config_file", "sources")], (
        "one field per row"
    )
    for view in (ApiSettings, Policy, Quotas):
        for f in fields(view):
            assert f.name in own, f"{view.__name__}.{f.name} is not a setting"
            assert f.type == own[f.name].type, f"{view.__name__}.{f.name}: {f.type} != {own[f.name].type}"
            if f.default is not MISSING:
                assert f.default == own[f.name].default, f"{view.__name__}.{f.name} has its own default"
    s = Settings.load({"KRPO_BENCH_MAX_TRIALS": "7", "KRPO_BENCH_DATA_ROOTS": "/srv/data"})
    policy = ks.settings_view(Policy, ks.settings_view(ApiSettings, s))
    assert (policy.max_trials, policy.data_roots, policy.max_model_params) == (
        7,
        (Path("/srv/data"),),
        s.max_model_params,
    )


def test_config_command_prints_values_and_sources(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from krpo_bench.cli import app

    config = tmp_path / "c.toml"
    config.write_text('max_trials = 42\napi_token = "file-secret"\n')
    monkeypatch.setenv("KRPO_BENCH_CONFIG", str(config))
    monkeypatch.setenv("KRPO_BENCH_DB", "postgresql://krpo:hunter2@db:5432/krpo")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    for name in ENV_VARS:
        assert name in result.output
    assert "hunter2" not in result.output and "file-secret" not in result.output, "secrets are masked"
    assert "postgresql://krpo:****@db:5432/krpo" in result.output
    assert re.search(r"KRPO_BENCH_MAX_TRIALS=42\s+# max_trials: file ", result.output)
    data = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)
    assert data["max_trials"] == {"env": "KRPO_BENCH_MAX_TRIALS", "value": "42", "source": f"file {config}"}
    assert data["db"]["source"] == "env KRPO_BENCH_DB" and data["home"]["value"] == str(clean_env)
    monkeypatch.setenv("KRPO_BENCH_MAX_BODY_BYTES", "lots")
    bad = CliRunner().invoke(app, ["config"])
    assert bad.exit_code == 2 and "KRPO_BENCH_MAX_BODY_BYTES" in bad.output and "Traceback" not in bad.output


# -- every setting in a config file alone takes effect where it is used -----------------------------


@pytest.fixture()
def file_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[dict, str]:
    """Every setting of README's table in one TOML file; no krpo-bench variable in the environment.
    Returns the file's values and an admin token that the file's token store holds."""
    from krpo_bench.api.auth import TokenStore

    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "data").mkdir()
    token, _ = TokenStore(tmp_path / "tokens.json").create("from-file", ["admin"])
    values = {
        "home": str(tmp_path / "home"),
        "db": f"sqlite:///{tmp_path / 'jobs.db'}",
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'tracking.db'}",
        "cpu_threads": 3,
        "mlflow_retry_s": 7.5,
        "api_url": "http://krpo.example:8123",
        "api_token": token,
        "api_tokens_file": str(tmp_path / "tokens.json"),
        "data_roots": [str(tmp_path / "data")],
        "allow_remote_code": True,
        "max_body_bytes": 4000,
        "max_trials": 2,
        "max_model_params": 10_000_000,
        "max_stored_bytes": 8_000,
        "mlflow_ui_url": "http://mlflow-ui.example",
        "list_cache_s": 600.0,
        "default_timeout_s": 900,
        "max_active_trials_per_token": 3,
        "max_trial_hours_per_token": 1,
    }
    config = tmp_path / "krpo-bench.toml"
    config.write_text(
        "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items() if key in ks.VARS_BY_KEY)
    )
    monkeypatch.setenv("KRPO_BENCH_CONFIG", str(config))
    return values, token


def test_the_readme_table_is_the_file_fixture(file_only: tuple[dict, str]) -> None:
    values, _ = file_only
    assert set(ks.VARS_BY_KEY) <= set(values), "the next test must set every setting through the file"
    assert all(source.startswith("file ") for source in ks.get_settings().sources.values())


def test_every_setting_in_the_config_file_takes_effect(file_only: tuple[dict, str], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from krpo_bench.api.app import create_app
    from krpo_bench.api.auth import TokenStore

    from krpo_bench.cli import app as cli
    from krpo_bench.client import Client
    from krpo_bench.service.studies import StudyService
    from krpo_bench.service.worker import cpu_threads_per_trial as _cpu_threads
    from krpo_bench.tracking import RunTracker

    values, token = file_only
    assert ks.data_home() == Path(values["home"]) and ks.trial_folder("t1") == Path(values["home"]) / "trials" / "t1"
    service = StudyService()
    assert str(service.engine.url) == values["db"] and service.mlflow_uri == values["mlflow_tracking_uri"]
    tracker = RunTracker()
    assert tracker.tracking_uri == values["mlflow_tracking_uri"] and tracker.retry_s == 7.5
    assert _cpu_threads(cpu_slots=1) == 3, "the worker's torch threads per CPU trial"
    client = Client()
    assert str(client.http.base_url) == values["api_url"] and client.http.headers["Authorization"] == f"Bearer {token}"

    with TestClient(create_app()) as http:
        assert http.get("/api/v1/studies").status_code == 401, "api_tokens_file: the server requires its tokens"
        api = Client(http=http)  # base URL from the test client; the token from the file
        made = api.submit(tiny_ablation("from-file", model={"name": "tiny-arith", "trust_remote_code": True}))
        assert made["total"] == 1, "allow_remote_code: trust_remote_code accepted"
        assert Path(values["mlflow_tracking_uri"].removeprefix("sqlite:///")).exists(), (
            "the study's experiment went there"
        )

        headers = {"Authorization": f"Bearer {token}"}
        outside = tmp_path / "elsewhere.jsonl"
        outside.write_text('{"prompt": "1+1=", "answer": "2"}\n')
        jsonl = {"kind": "jsonl", "path": str(outside), "rewards": [{"name": "exact"}]}
        refused = http.post("/api/v1/studies", json=tiny_ablation("outside", task=jsonl), headers=headers)
        assert refused.status_code == 422 and refused.json()["errors"][0]["type"] == "path_outside_data_roots", (
            refused.text
        )
        assert values["data_roots"][0] in refused.json()["errors"][0]["message"]

        big = http.post("/api/v1/studies", json=tiny_ablation("big", seeds=3), headers=headers)
        assert big.status_code == 422 and "2" in big.text, "max_trials: 3 trials refused"
        assert http.post("/api/v1/studies", content=b"x" * 4001, headers=headers).status_code == 413, "max_body_bytes"
        large = http.post(
            "/api/v1/studies", json=tiny_ablation("large", model={"name": "smollm2-135m"}), headers=headers
        )
        assert large.status_code == 422 and "model_too_large" in large.text, (
            "max_model_params: 135 M parameters refused"
        )
        stored = http.post(
            "/api/v1/studies",
            json=tiny_ablation("stored", 2, task={**TINY_TASK, "templates": ["{expr}" + "x" * 800] * 4}),
            headers=headers,
        )
        assert stored.status_code == 422 and "too_much_stored" in stored.text, (
            "max_stored_bytes: ~9 KB of configs refused"
        )

        assert [j.timeout_s for j in service.queue.list_jobs(made["id"])] == [900], "default_timeout_s"
        submitter = {
            "Authorization": f"Bearer {TokenStore(Path(values['api_tokens_file'])).create('submitter', ['submit'])[0]}"
        }
        assert http.post("/api/v1/studies", json=tiny_ablation("two", seeds=2), headers=submitter).status_code == 201
        more = http.post("/api/v1/studies", json=tiny_ablation("two-more", seeds=2), headers=submitter)
        assert more.status_code == 429 and "MAX_ACTIVE_TRIALS_PER_TOKEN" in more.text, (
            "max_active_trials_per_token: 4 > 3"
        )
        hour = http.post(
            "/api/v1/studies", json={**tiny_ablation("hour"), "resources": {"timeout_s": 3600}}, headers=submitter
        )
        assert hour.status_code == 429 and "MAX_TRIAL_HOURS_PER_TOKEN" in hour.text, (
            "max_trial_hours_per_token: 1.5 h > 1 h"
        )

        listed = api.list_studies()["items"]
        StudyService().submit(tiny_ablation("behind-the-cache"))  # not through the API: the cache is not cleared
        assert api.list_studies()["items"] == listed, "list_cache_s: the page is reused"

        job = service.queue.claim("w1", 60.0)
        service.queue.set_mlflow_run(job.id, job.attempt, "r" * 32)
        link = api.job(job.id)["mlflow_run_url"]
        assert link.startswith(values["mlflow_ui_url"] + "/#/experiments/"), link

    result = CliRunner().invoke(cli, ["status"])  # no --db: the file's database
    assert result.exit_code == 0 and "from-file" in result.output, result.output
    result = CliRunner().invoke(cli, ["submit", str(ROOT / "studies" / "quickstart.yaml")])
    assert result.exit_code != 0 and values["api_url"] in result.output, "api_url: the CLI submits to the server"
