"""Commands that do not train answer without importing the training stack: each runs in a fresh
process through a wrapper that reports, at exit, which of torch / transformers / trl it loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest

from krpo_bench.settings import ENV_VARS
from tests.trial_specs import tiny_ablation

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl")
WATCHED = (*HEAVY, "alembic")  # alembic: only when a database needs migrating
WRAPPER = textwrap.dedent(f"""
    import atexit, json, sys
    atexit.register(lambda: print("LOADED=" + json.dumps([m for m in {WATCHED!r} if m in sys.modules])))
    sys.argv[0] = "krpo-bench"
    from krpo_bench.cli import app
    app()
""")
ABLATION = tiny_ablation("imports-ablation")
SEARCH = {
    "name": "imports-search",
    "kind": "search",
    "base": ABLATION["base"],
    "n_trials": 1,
    "parallelism": 1,
    "sampler": "random",
    "space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}},
}

COMMANDS = {
    "help": ["--help"],
    "config": ["config"],
    "token list": ["token", "list"],
    "token create": ["token", "create", "ci", "--scope", "read"],
    "schema": ["schema", "study"],
    "validate": ["validate", "{study_file}"],
    "submit": ["submit", "{study_file}"],
    "status": ["status"],
    "status one study": ["status", "imports-ablation"],
    "cancel": ["cancel", "imports-ablation"],
    "resume": ["resume", "imports-ablation"],
    "extend": ["extend", "imports-search", "1"],
    "report": ["report", "imports-ablation", "--out", "{home}/report"],
    "reanalyze": ["reanalyze", str(ROOT / "docs" / "results" / "calibration_summary.json")],
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data home holding one ablation and one search study, and a study file."""
    from krpo_bench.service.studies import StudyService

    home = tmp_path_factory.mktemp("cli-imports")
    (home / "study.json").write_text(json.dumps({**ABLATION, "name": "imports-submitted"}))
    service = StudyService(f"sqlite:///{home / 'krpo-bench.db'}", f"sqlite:///{home / 'mlflow.db'}")
    for spec in (ABLATION, SEARCH):
        service.submit(spec)
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    return {**env, "KRPO_BENCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}


@cache
def loaded_by(name: str, home: Path) -> list[str]:
    """The watched modules the command ``name`` imported (it must succeed)."""
    args = [a.format(study_file=home / "study.json", home=home) for a in COMMANDS[name]]
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], env=_env(home), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"krpo-bench {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    line = [x for x in result.stdout.splitlines() if x.startswith("LOADED=")][-1]
    return json.loads(line.removeprefix("LOADED="))


@pytest.mark.parametrize("name", COMMANDS)
def test_commands_that_do_not_train_import_no_training_stack(name: str, home: Path) -> None:
    loaded = loaded_by(name, home)
    assert not set(HEAVY) & set(loaded), f"krpo-bench {name} imported {loaded}"


def test_status_of_a_migrated_database_does_not_load_alembic(home: Path) -> None:
    assert "alembic" not in loaded_by("status", home)


def test_the_packaged_head_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from krpo_bench.service.db import alembic_config, packaged_head

    assert packaged_head() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_the_torch_free_parameter_models_are_the_estimators_own() -> None:
    """Specs validate against the catalog's models (no torch); each row's class, imported by its
    path, is built with that very model."""
    from krpo_bench.advantages import CATALOG, Estimator, get_estimator

    for name, entry in CATALOG.items():
        assert issubclass(entry.estimator_class(), Estimator) and issubclass(entry.spec, entry.params), name
        assert type(get_estimator(name).params) is entry.spec, name


def test_a_worker_starts_without_the_statistics_stack() -> None:
    """Workers start by the dozen (an array, a restart): scipy and statsmodels load only when a study
    is analysed (a sequential look, a detail, a confirmation), not when the worker module loads."""
    probe = "import json, sys, krpo_bench.service.worker; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True).stdout
    )
    assert not [m for m in loaded if m.split(".")[0] in ("scipy", "statsmodels")]
