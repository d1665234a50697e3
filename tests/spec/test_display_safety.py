"""Names are data (issue 19, items 1-3 and 9): nothing a spec holds is read as Rich markup or reaches a
terminal as an escape sequence; every displayed name follows the one display-name rule; a path
parameter no id or name can hold is a 404 on every database. The worker test runs a real
``krpo-bench worker`` that claims a markup-named job beside another one and survives."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from krpo_bench.api.app import create_app
from krpo_bench.api.settings import ApiSettings
from rich.table import Table

from krpo_bench.probe.spec import validate_probe
from krpo_bench.service.studies import StudyService
from krpo_bench.service.worker import Worker
from krpo_bench.spec.loading import SpecError, validate
from krpo_bench.spec.names import plain_console, shown, styled
from krpo_bench.spec.study import validate_study
from krpo_bench.spec.trial import TrialSpec
from tests.api.test_api import BASE, SPEC
from tests.probe.test_probe import PROBE
from tests.trial_specs import tiny_trial

MARKUP = ["[/]", "[/bold]", "[link=https://evil.example]click me[/link]", "[bold red]loud[/] :smile:"]
CONTROLS = {
    "ESC (clipboard write)": "x\x1b]52;c;aGVsbG8=\x07",
    "CR (erase and forge a line)": "x\x1b[2K\rforged",
    "LF": "x\ny",
    "C1 CSI": "x\x9b31m",
    "DEL": "x\x7f",
    "RLO": "x\u202ey",
    "RLI": "x\u2067y",
    "line separator": "x\u2028y",
}


def _study(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SPEC)
    out.update(changes)
    return out


def hostile_fields(bad: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(field, kind of spec, spec holding ``bad`` in that field, the error path that must name it)."""
    return [
        ("study name", "study", _study(name=bad), "name"),
        (
            "variant key",
            "study",
            _study(variants={bad: {"estimator": {"name": "grpo"}}}),
            f"variants.{shown(bad, keep_lines=False)}",
        ),
        (
            "grid value (a label)",
            "study",
            _study(grid={"training.lr_scheduler": ["linear", bad]}),
            "grid.training.lr_scheduler[1]",
        ),
        (
            "grid path (a label)",
            "study",
            _study(grid={f"training.{bad}": [1]}),
            f"grid.training.{shown(bad, keep_lines=False)}",
        ),
        ("MLflow experiment", "study", _study(base={**BASE, "experiment": bad}), "base.experiment"),
        ("probe name", "probe", {**PROBE, "name": bad}, "name"),
        ("probe experiment", "probe", {**PROBE, "experiment": bad}, "experiment"),
        ("trial name", "trial", {**tiny_trial(), "name": bad}, "name"),
    ]


def _paths(exc: SpecError) -> list[str]:
    return [e["path"] for e in exc.errors]


@pytest.mark.parametrize("bad", list(CONTROLS.values()), ids=list(CONTROLS))
def test_every_displayed_name_refuses_control_and_bidi_characters_naming_its_path(bad: str) -> None:
    validators = {"study": validate_study, "probe": validate_probe, "trial": lambda data: validate(TrialSpec, data)}
    for field, kind, data, path in hostile_fields(bad):
        with pytest.raises(SpecError) as err:
            validators[kind](data)
        assert path in _paths(err.value), (field, err.value.errors)
        assert "names are display text" in str(err.value), field
        assert bad not in str(err.value), f"{field}: the message shows the character escaped, never raw"


@pytest.mark.parametrize("name", MARKUP)
def test_markup_in_a_name_is_accepted_as_text(name: str) -> None:
    assert validate_study(_study(name=name, variants={name: {"estimator": {"name": "grpo"}}})).name == name
    assert validate_probe({**PROBE, "name": name, "experiment": name}).name == name


def test_labels_that_would_make_an_overlong_trial_name_are_a_spec_error_not_a_crash() -> None:
    with pytest.raises(SpecError) as err:
        validate_study(_study(variants={"v" * 190: {}}, grid={"training.learning_rate": [0.0001]}))
    assert _paths(err.value) == ["grid"] and "at most 200 characters" in str(err.value)


def test_a_plain_console_prints_markup_literally_and_escapes_control_characters() -> None:
    out = io.StringIO()
    console = plain_console(file=out, width=200, force_terminal=True)
    table = Table(title="[/]")
    table.add_column("[/bold]")
    table.add_row("[link=https://evil.example]x[/link] \x1b]52;c;aGk=\x07 \u202e")
    console.print("started [/] :smile: x\x1b[2K\rforged", table, styled("[bold]", "bold"))
    text = out.getvalue()
    for literal in (
        "started [/] :smile: x\\x1b[2K\\rforged",
        "[/]",
        "[/bold]",
        "[link=https://evil.example]x[/link]",
        "\\x1b]52;c;aGk=\\x07 \\u202e",
        "[bold]",
    ):
        assert literal in text, literal
    assert "\x1b]" not in text and "\r" not in text and "\u202e" not in text, "no OSC sequence, CR or bidi control"
    assert shown("a\tb\nc\x1b") == "a\tb\nc\\x1b", "free text keeps its lines and tabs"


# -- the API: 422 for each field, 404 for a path no id or name can hold --------------------------


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        db=db_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
        list_cache_s=0,
    )
    with TestClient(create_app(settings), base_url="http://localhost") as http:
        yield http


@pytest.mark.parametrize("bad", [CONTROLS["CR (erase and forge a line)"], CONTROLS["RLO"]], ids=["CR", "RLO"])
def test_the_api_refuses_each_field_with_a_422_naming_its_path(tmp_path: Path, bad: str) -> None:
    settings = ApiSettings(
        db=f"sqlite:///{tmp_path / 'jobs.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        api_tokens_file=tmp_path / "tokens.json",
        data_roots=(tmp_path,),
        list_cache_s=0,
    )
    with TestClient(create_app(settings), base_url="http://localhost") as http:
        for field, kind, data, path in hostile_fields(bad):
            if kind == "trial":
                continue  # a trial is run with `krpo-bench trial`, never submitted
            response = http.post("/api/v1/studies", json=data)
            assert response.status_code == 422, (field, response.text)
            assert path in [e["path"] for e in response.json()["errors"]], (field, response.json())
        assert http.get("/api/v1/studies").json()["items"] == [], "nothing was stored"


def test_a_path_no_id_or_name_can_hold_is_404_on_every_database(api: TestClient) -> None:
    study = api.post("/api/v1/studies", json=SPEC).json()
    paths = [
        "/api/v1/studies/%00",
        "/api/v1/jobs/%00",
        "/api/v1/studies/a%00b/jobs",
        "/studies/%00/dashboard",
        "/api/v1/studies/%00/results",
        f"/api/v1/studies/{study['id'][:8]}%00",
        "/api/v1/studies/t%1B[2K",
    ]
    for path in paths:
        response = api.get(path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", (path, response.text)
    assert api.post("/api/v1/studies/%00/cancel").status_code == 404
    assert api.get(f"/api/v1/studies/{study['id']}").status_code == 200


# -- the CLI's list of studies and a real worker --------------------------------------------------


def test_status_lists_markup_names_as_text_without_terminal_hyperlinks(tmp_path: Path) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in MARKUP:
        service.submit(validate_study(_study(name=name)))
    service.engine.dispose()
    env = dict(os.environ, FORCE_COLOR="1", COLUMNS="80")  # rich treats the pipe as a terminal, links and all
    done = subprocess.run(
        [sys.executable, "-m", "krpo_bench.cli", "status", "--db", service.db_url, "--mlflow", service.mlflow_uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in MARKUP:
        assert repr(name) in done.stdout, name
    assert "\x1b]8;" not in done.stdout, "no OSC 8 hyperlink reaches the operator's terminal"


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("the reader went away")


def test_a_line_the_worker_cannot_print_is_logged_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    worker = Worker(service, devices=["cpu"], fork_server=False)
    worker.console.file = _ClosedPipe()  # e.g. the log shipper reading its stderr went away
    worker.say("started [/]|seed=0 (attempt 1) on cpu")
    assert "could not print a line" in caplog.text and "BrokenPipeError" in caplog.text


@pytest.mark.slow
def test_a_worker_survives_a_markup_named_job_and_finishes_its_other_trial(tmp_path: Path) -> None:
    service = StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = {k: v for k, v in tiny_trial(steps=1).items() if k != "name"}
    info = service.submit(
        validate_study(
            {
                "name": "[/] poison",
                "kind": "ablation",
                "base": base,
                "seeds": 1,
                "variants": {"[/]": {}, "plain": {}},
                "resources": {"max_attempts": 1},
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "worker",
        "--gpus",
        "cpu",
        "--slots-per-gpu",
        "2",
        "--exit-when-idle",
        "--db",
        service.db_url,
        "--mlflow",
        service.mlflow_uri,
        "--heartbeat-s",
        "1",
    ]
    done = subprocess.run(
        cmd, env=dict(os.environ, KRPO_BENCH_CPU_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MarkupError" not in done.stderr
    assert "started [/]|seed=0 (attempt 1)" in done.stderr and "started plain|seed=0 (attempt 1)" in done.stderr
    jobs = service.jobs(info.id)
    assert sorted((j.trial_key, j.status, j.attempt) for j in jobs) == [
        ("[/]|seed=0", "succeeded", 1),
        ("plain|seed=0", "succeeded", 1),
    ]
    assert service.get(info.id).status == "succeeded"
