"""The ``krpo-bench`` command line: thin wrappers over the library and the study service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from krpo_bench.spec.loading import SpecError, load_spec

app = typer.Typer(help="Benchmark and ablate critic-free RL baselines (KRPO, GRPO, RLOO, ...).", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def trial(
    file: Path = typer.Argument(..., help="trial YAML (model, task, estimator, training)"),
    fresh: bool = typer.Option(False, help="discard this trial's checkpoints and result, start over"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI (default: embedded store)"),
    run_dir: Optional[Path] = typer.Option(None, help="run folder (default: <data home>/trials/<trial id>)"),
) -> None:
    """Train one trial; running it again resumes from its newest checkpoint."""
    from krpo_bench.settings import data_home
    from krpo_bench.spec.trial import TrialSpec
    from krpo_bench.training.trial import run_trial

    try:
        spec = load_spec(TrialSpec, file)
    except SpecError as exc:
        fail(str(exc))
    folder = run_dir or data_home() / "trials" / spec.resolved_id()
    if fresh and folder.exists():
        shutil.rmtree(folder)
    console.print(f"trial [bold]{spec.resolved_id()}[/bold] -> {folder}")
    result = run_trial(spec, run_dir=folder, tracking_uri=mlflow, progress=True)
    table = Table(title=f"{spec.name} ({spec.estimator.name})")
    for key in ("status", "steps", "initial_accuracy", "final_accuracy", "final_pass_at_k", "wall_time_s", "mean_step_time_s", "mlflow_run_id"):
        value = getattr(result, key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def validate(file: Path = typer.Argument(..., help="trial or study YAML")) -> None:
    """Check a spec file; every error names its YAML path, the value and what is allowed."""
    from krpo_bench.spec.trial import TrialSpec

    try:
        spec = load_spec(TrialSpec, file)
    except SpecError as exc:
        fail(str(exc))
    console.print(f"[green]ok[/green] trial {spec.resolved_id()}")


@app.command()
def schema(kind: str = typer.Argument("trial", help="trial")) -> None:
    """Print the JSON Schema of a spec (for editors)."""
    from krpo_bench.spec.trial import TrialSpec

    models = {"trial": TrialSpec}
    if kind not in models:
        fail(f"unknown schema {kind!r}; allowed: {', '.join(models)}")
    console.print_json(json.dumps(models[kind].model_json_schema()))


if __name__ == "__main__":
    app()
