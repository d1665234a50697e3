"""MLflow as a user meets it: a first run on a fresh store prints no database-migration chatter,
and the experiments we create open on their training runs in the MLflow 3 UI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow import MlflowClient


def test_first_run_is_quiet_and_the_experiment_opens_on_its_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    script = textwrap.dedent(f"""
        from krpo_bench.tracking import RunTracker
        tracker = RunTracker({uri!r})
        tracker.start("first-experiment", "first-run")
        tracker.log_metrics({{"loss": 1.0}}, step=1)
        tracker.finish()
    """)
    env = {"KRPO_BENCH_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "database tables" not in output and "alembic" not in output.lower() and " INFO " not in output, output
    experiment = MlflowClient(uri).get_experiment_by_name("first-experiment")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
