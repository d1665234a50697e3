"""The ``krpo-bench`` command line: thin wrappers over the library and the study service.

Commands that do not train (``status``, ``submit``, ``cancel``, ``report``, ``config``, ...) must not
import torch, transformers or trl: everything past this module's own imports is imported inside
the command that needs it (tests/test_cli_imports.py checks each command in a fresh process).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.measure import Measurement
from rich.table import Table

from krpo_bench.spec.loading import SpecError, load_spec
from krpo_bench.spec.names import plain_console, styled

app = typer.Typer(help="Benchmark and ablate critic-free RL baselines (KRPO, GRPO, RLOO, ...).", no_args_is_help=True)
console = plain_console(soft_wrap=not sys.stdout.isatty())  # names are data: never markup or escapes;
# in a log or a pipe a line is never wrapped at Rich's 80 columns (a path or a verdict stays one line)
err = plain_console(stderr=True, soft_wrap=not sys.stderr.isatty())  # an error names a path whole


def fail(message: str, code: int = 2) -> None:
    err.print(styled("error:", "red"), message)
    raise typer.Exit(code)


def print_table(table: Table) -> None:
    """Print ``table`` with nothing cut: in a terminal its name columns fold onto more lines; in a log
    or a pipe (which Rich would treat as 80 columns wide) it is printed as wide as its widest row."""
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(10**6), table).maximum
    plain_console(file=console.file, width=max(console.width, natural)).print(table)


def name_column(table: Table, header: str) -> None:
    """Add a column of names to ``table``: folded onto more lines when narrow, never cut with an ellipsis."""
    table.add_column(header, overflow="fold")


@app.callback()
def _check_settings() -> None:
    """Refuse to start on unusable settings (a bad variable or config file), naming what is wrong."""
    from krpo_bench.settings import SettingsError, get_settings

    try:
        get_settings()
    except SettingsError as exc:
        fail(str(exc))


@app.command()
def trial(
    file: Path = typer.Argument(..., help="trial YAML (model, task, estimator, training)"),
    fresh: bool = typer.Option(False, help="discard this trial's checkpoints and result, start over"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI (default: embedded store)"),
    run_dir: Optional[Path] = typer.Option(None, help="run folder (default: <data home>/trials/<trial id>)"),
) -> None:
    """Train one trial; running it again resumes from its newest checkpoint."""
    from krpo_bench.settings import trial_folder
    from krpo_bench.spec.trial import TrialSpec
    from krpo_bench.training.trial import run_trial

    try:
        spec = load_spec(TrialSpec, file)
    except SpecError as exc:
        fail(str(exc))
    folder = run_dir or trial_folder(spec.resolved_id())
    if fresh and folder.exists():
        shutil.rmtree(folder)
    console.print("trial", styled(spec.resolved_id(), "bold"), f"-> {folder}")
    result = run_trial(spec, run_dir=folder, tracking_uri=mlflow, progress=True)
    table = Table(title=f"{spec.name} ({spec.estimator.name})")
    for key in (
        "status",
        "steps",
        "initial_accuracy",
        "final_accuracy",
        "final_pass_at_k",
        "wall_time_s",
        "mean_step_time_s",
        "mlflow_run_id",
    ):
        value = getattr(result, key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    print_table(table)


DbOption = typer.Option(None, "--db", help="job database URL (default: the db setting, see 'krpo-bench config')")
MlflowOption = typer.Option(None, "--mlflow", help="MLflow tracking URI (default: the mlflow_tracking_uri setting)")
ApiOption = typer.Option(
    None, "--api", help="talk to this krpo-bench server instead of the database (default: the api_url setting)"
)
StudyArgument = typer.Argument(
    ..., help="study id, unique id prefix, study name (its newest study) or name~N (the N-th older one)"
)


def load_any(file: Path):
    """The study kind's handler (None for a trial) and the validated spec, whichever the file is."""
    from krpo_bench.service.kinds import submitted_handler
    from krpo_bench.spec.kind import kind_of
    from krpo_bench.spec.loading import parse_yaml
    from krpo_bench.spec.loading import validate as validate_model
    from krpo_bench.spec.trial import TrialSpec

    try:
        data = parse_yaml(file.read_bytes(), str(file))
    except OSError as exc:
        fail(f"{file}: cannot read file: {exc.strerror}")
    except SpecError as exc:
        fail(str(exc))
    try:
        if kind_of(data) is None:
            return None, validate_model(TrialSpec, data, str(file))
        kind = submitted_handler(data)
        return kind, kind.validate(data, str(file))
    except SpecError as exc:
        fail(str(exc))


def load_study(file: Path):
    """The validated study spec of any kind in the file; a clean error when it holds a trial."""
    kind, spec = load_any(file)
    if kind is None:
        fail(f"{file} is a trial, not a study; run it with 'krpo-bench trial {file}'")
    return spec


def _service(db: str | None, mlflow: str | None):
    from krpo_bench.service.studies import StudyService

    return StudyService(db, mlflow)


def _study_id(service, ref: str) -> str:
    """The id of the study ``ref`` names (id, unique id prefix or unique name), else a clean error."""
    from krpo_bench.service.studies import AmbiguousStudy, StudyNotFound

    try:
        return service.resolve(ref)
    except StudyNotFound:
        fail(f"no study {ref!r} (give a study id, a unique id prefix, a study name or name~N for the N-th older one)")
    except AmbiguousStudy as exc:
        fail(str(exc))


@app.command()
def validate(file: Path = typer.Argument(..., help="trial or study YAML")) -> None:
    """Check a spec file; every error names its YAML path, the value and what is allowed."""
    kind, spec = load_any(file)
    console.print(styled("ok", "green"), kind.describe(spec) if kind is not None else f"trial {spec.resolved_id()}")


@app.command()
def schema(kind: str = typer.Argument("study", help="study | trial")) -> None:
    """Print the JSON Schema of a spec (for editors)."""
    from krpo_bench.spec.study import StudySpec
    from krpo_bench.spec.trial import TrialSpec

    models = {"trial": TrialSpec, "study": StudySpec}
    if kind not in models:
        fail(f"unknown schema {kind!r}; allowed: {', '.join(models)}")
    print(json.dumps(models[kind].model_json_schema(), indent=2))


def _print_study(info, workers: int | None = None, ref: str | None = None) -> None:
    """One line per study: id, name (``ref``: how to name it when an older study of its name), kind,
    state, progress and job counts. With ``workers`` (live workers) the state is the display state
    (``queued``, ``waiting for a worker``), else the stored status."""
    from krpo_bench.service.study_state import display_state

    counts = ", ".join(f"{k} {v}" for k, v in sorted(info.counts.items())) or "no jobs yet"
    state = info.status if workers is None else display_state(info.status, info.counts, workers)
    named = f"{info.name!r}" + (f" (older: {ref})" if ref is not None and ref != info.name else "")
    console.print(
        "study",
        styled(info.id, "bold"),
        f"{named} ({info.kind}): {state}; {info.done}/{info.total} done; {counts}",
        soft_wrap=True,
    )  # one line per study, the name whole, also in an 80-column log


def _print_studies(service, infos) -> None:
    """Studies with their display state and name reference, then how to start a worker when one waits for it."""
    from krpo_bench.service.study_state import START_A_WORKER, WAITING_FOR_WORKER, display_state, live_workers_of

    workers = live_workers_of(service)
    for info in infos:
        _print_study(info, workers, service.ref_of(info))
    if any(display_state(i.status, i.counts, workers) == WAITING_FOR_WORKER for i in infos):
        console.print(START_A_WORKER, soft_wrap=True)


@app.command()
def submit(
    file: Path, db: Optional[str] = DbOption, mlflow: Optional[str] = MlflowOption, api: Optional[str] = ApiOption
) -> None:
    """Submit a study (a probe: one job); workers pick up its trials."""
    spec = load_study(file)
    from krpo_bench.settings import get_settings

    api = api or get_settings().api_url
    if api:
        try:
            import httpx
        except ModuleNotFoundError:
            fail('submit --api needs httpx: pip install -e ".[dashboards]" or pip install httpx')
        from krpo_bench.client import ApiError, Client

        try:
            console.print_json(json.dumps(Client(api).submit(spec.model_dump(mode="json"))))
        except (ApiError, httpx.HTTPError) as exc:
            fail(f"{api}: {exc}")
        return
    service = _service(db, mlflow)
    _print_studies(service, [service.submit(spec)])


@app.command()
def status(
    study: Optional[str] = typer.Argument(
        None, help="study id, unique id prefix, study name or name~N (default: list them)"
    ),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
) -> None:
    """One study's progress and per-variant results, or the list of studies."""
    service = _service(db, mlflow)
    if study is None:
        _print_studies(service, service.list(limit=50))
        return
    info = service.get(_study_id(service, study))
    _print_studies(service, [info])
    original = _print_confirmed(service, info.id)
    _study_results(service, info)
    if original is not None:
        _replication_tables(service, info.id, alone=False)


def _print_confirmed(service, study_id: str) -> str | None:
    """For a confirmation: print the study it confirms and return its id (None for any other study)."""
    from krpo_bench.service.replication import confirmed_study

    original = confirmed_study(service, study_id)
    if original is not None:
        console.print(
            "confirms study", styled(original, "bold"), f"{service.get(original).name!r} on fresh seeds", soft_wrap=True
        )
    return original


def _replication_tables(service, study_id: str, *, alone: bool = True) -> None:
    """A confirmation's analysis: alone (the pre-declared test; left out when ``alone`` is False, where the
    study's own table was printed), pooled with its original, and the heterogeneity between the two."""
    from krpo_bench.analysis import format as fmt
    from krpo_bench.service.replication import replication

    result = replication(service, study_id)
    if alone:
        console.print(styled("the confirmation alone (the pre-declared test):", "bold"))
        _analysis_table(result.confirmation)
    console.print(
        styled("pooled with the original study ", "bold"),
        styled(result.original_id, "bold"),
        styled(" (seeds of both):", "bold"),
        sep="",
    )
    _analysis_table(result.pooled)
    table = Table(
        title="heterogeneity: the difference vs the reference in the original and in the confirmation "
        "(points, ± its seed-level standard error); Cochran's Q (1 df), its p and I², and the "
        "small-sample p (t, Welch-Satterthwaite df)"
    )
    name_column(table, "variant")
    for header in ("Δ original", "Δ confirmation", "Q", "p", "I²", "p small-sample"):
        table.add_column(header)
    for row in result.heterogeneity:
        table.add_row(
            row.label,
            f"{fmt.signed_points(row.original_difference)} ± {fmt.points(row.original_se)}",
            f"{fmt.signed_points(row.confirmation_difference)} ± {fmt.points(row.confirmation_se)}",
            fmt.fraction(row.q, 2),
            fmt.p_value(row.p_value),
            fmt.probability(row.i_squared),
            fmt.p_value(row.small_sample_p),
        )
    print_table(table)


def _study_results(service, info) -> None:
    """The per-variant results table, else (a probe study) its one job's table once it succeeded."""
    from krpo_bench.service.kinds import handler

    if handler(info.kind).analysed:
        _results_table(service, info.id)
        return
    from krpo_bench.dashboards.study import probe_result

    try:
        _probe_table(*probe_result(service, info.id))
    except ValueError as exc:
        console.print(str(exc))


def _result_columns(analysis) -> list[tuple[str, Callable[[Any, Any], str]]]:
    """The results table's columns after the variant: (header, cell of a variant and its comparison)."""
    from krpo_bench.analysis import format as fmt

    def versus(render: Callable[[Any], str], reference: str = "") -> Callable[[Any, Any], str]:
        return lambda row, compared: (
            render(compared) if compared is not None else (reference if row.variant == analysis.reference else "")
        )

    target = f"{analysis.target_effect * 100:g} pts" if analysis.comparisons else "target"
    return [
        ("seeds", lambda row, _: str(row.n)),
        ("before", lambda row, _: fmt.fraction(row.initial_mean)),
        ("final [95 % CI]", lambda row, _: fmt.with_interval(row.mean, fmt.fraction)),
        ("per seed", lambda row, _: " ".join(fmt.fraction(v) for v in row.values)),
        ("Δ [95 % CI]", versus(lambda c: fmt.with_interval(c.difference, fmt.signed_points), "reference")),
        ("analysis", versus(lambda c: c.analysis)),
        ("verdict", versus(lambda c: c.verdict)),
        ("p Holm", versus(lambda c: fmt.p_value(c.p_holm))),
        (f"TOST ±{fmt.points(analysis.margin)} p Holm", versus(lambda c: fmt.p_value(c.tost_p_holm))),
        ("detectable", versus(lambda c: fmt.points(c.mde))),
        (f"seeds for {target}", versus(lambda c: fmt.seeds(c.seeds_needed))),
        ("seeds to decide", versus(lambda c: fmt.seeds(c.seeds_to_decide))),
    ]


def _results_table(service, study_id: str) -> None:
    _analysis_table(service.results(study_id))


def _analysis_table(analysis) -> None:
    """The per-variant results table of an analysis (a study's, a confirmation's, a pooled one), then its verdicts."""
    columns = _result_columns(analysis)
    table = Table(
        title="held-out accuracy before training and final (mean, 95 % t-interval across seeds); "
        "Δ vs the reference in points (its interval covers the seeds, on these test items); "
        "p Holm-adjusted over the comparisons shown; TOST: equivalence within the margin; "
        "detectable difference at 80 % power, alpha 0.05"
    )
    name_column(table, "variant")
    for header, _ in columns:
        table.add_column(header)
    for row in analysis.variants:
        compared = analysis.comparison(row.label)
        table.add_row(row.label, *(cell(row, compared) for _, cell in columns))
    print_table(table)
    for look in analysis.looks:
        console.print(
            f"look {look['look']} ({look['seeds']} seeds): "
            + ", ".join(f"{d['label']} {d['verdict']}" for d in look["decisions"])
        )
    for compared in analysis.comparisons + analysis.secondary:
        console.print(compared.sentence)


@app.command()
def cancel(study: str = StudyArgument, db: Optional[str] = DbOption, mlflow: Optional[str] = MlflowOption) -> None:
    """Cancel a study: queued trials at once, running ones within a heartbeat."""
    service = _service(db, mlflow)
    _print_study(service.cancel(_study_id(service, study)))


@app.command()
def resume(study: str = StudyArgument, db: Optional[str] = DbOption, mlflow: Optional[str] = MlflowOption) -> None:
    """Continue an interrupted or cancelled study; finished trials are kept, none repeated."""
    service = _service(db, mlflow)
    _print_study(service.resume(_study_id(service, study)))


@app.command()
def extend(
    study: str = StudyArgument,
    n: int = typer.Argument(..., help="trials to add"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
) -> None:
    """Add N trials to a search study (also a finished one)."""
    from krpo_bench.service.studies import StudyError

    service = _service(db, mlflow)
    study_id = _study_id(service, study)
    try:
        _print_study(service.extend(study_id, n))
    except StudyError as exc:
        fail(str(exc))


@app.command()
def worker(
    gpus: str = typer.Option("auto", help="auto | cpu | a list like 0,1"),
    slots_per_gpu: str = typer.Option("auto", help="concurrent trials per GPU, or auto (packed by memory estimate)"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
    lease_s: float = typer.Option(60.0, help="lease length; heartbeats renew it"),
    heartbeat_s: float = typer.Option(5.0, help="seconds between heartbeats"),
    exit_when_idle: bool = typer.Option(False, help="exit once no job is queued or running here"),
    fork_server: bool = typer.Option(
        True, help="fork one-process trials from a server with torch/TRL imported (else a fresh interpreter each)"
    ),
) -> None:
    """Claim and run trials until stopped (SIGTERM checkpoints and requeues running trials)."""
    from krpo_bench.service.worker import Worker, detect_devices

    if slots_per_gpu != "auto" and not (slots_per_gpu.isdigit() and int(slots_per_gpu) > 0):
        fail(f"--slots-per-gpu must be a positive integer or auto, got {slots_per_gpu!r}")
    slots = None if slots_per_gpu == "auto" else int(slots_per_gpu)
    try:
        devices = detect_devices(gpus)
    except ValueError as exc:
        fail(f"--gpus {gpus}: {exc}")
    Worker(
        _service(db, mlflow),
        devices=devices,
        slots_per_device=slots,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        exit_when_idle=exit_when_idle,
        fork_server=fork_server,
    ).run()


@app.command()
def slurm(
    file: Optional[Path] = typer.Argument(
        None, help="a study YAML to submit first (default: the workers serve the queue as it is)"
    ),
    workers: int = typer.Option(1, help="array tasks, one worker each"),
    gpus_per_worker: int = typer.Option(0, help="GPUs per task (--gres=gpu:N); 0: CPU workers"),
    cpus_per_worker: int = typer.Option(4, help="CPUs per task; the worker's trials share them"),
    time: str = typer.Option(
        "24:00:00", "--time", help="time limit per task (SLURM format: minutes, HH:MM:SS, D-HH:MM)"
    ),
    grace: int = typer.Option(
        180, help="seconds before the time limit that the worker gets SIGTERM to checkpoint and hand back"
    ),
    partition: Optional[str] = typer.Option(None, help="SLURM partition"),
    account: Optional[str] = typer.Option(None, help="SLURM account (passed through)"),
    qos: Optional[str] = typer.Option(None, help="SLURM QoS (passed through)"),
    slots_per_gpu: str = typer.Option("1", help="the worker's --slots-per-gpu"),
    job_name: str = typer.Option("krpo-bench", help="SLURM job name"),
    output: str = typer.Option("krpo-bench-%A_%a.out", help="each task's log file (sbatch --output pattern)"),
    dry_run: bool = typer.Option(False, help="print the script, submit nothing"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
) -> None:
    """Start a SLURM array of workers (sbatch); prints the script. Run it where sbatch works."""
    from krpo_bench.slurm import SlurmError, SlurmOptions, exported_settings, worker_script
    from krpo_bench.slurm import submit as sbatch

    options = SlurmOptions(
        workers=workers,
        time=time,
        grace_s=grace,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        slots_per_gpu=slots_per_gpu,
        partition=partition,
        account=account,
        qos=qos,
        job_name=job_name,
        output=output,
    )
    try:
        script = worker_script(options, exported_settings(db, mlflow))
    except SlurmError as exc:
        fail(str(exc))
    spec = load_study(file) if file else None
    print(script, end="")
    if dry_run:
        return
    if spec is not None:
        info = _service(db, mlflow).submit(spec)
        err.print(f"submitted study {info.id} ({info.total} trials)")
    try:
        job = sbatch(script)
    except SlurmError as exc:
        fail(str(exc))
    err.print(f"submitted worker array {job} ({workers} task(s)): squeue -j {job}")


@app.command()
def run(
    file: Path = typer.Argument(..., help="study YAML"),
    workers: int = typer.Option(0, help="local worker processes (0: one per GPU, or 2 on CPU)"),
    new: bool = typer.Option(False, help="start a new study even if this file was run before"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
    out: Optional[Path] = typer.Option(None, help="report folder (default: <data home>/reports/<study id>)"),
) -> None:
    """Submit a study (or a probe), run it on local workers with live progress, then print and report the results."""
    from krpo_bench.service.local import NotEnoughGPUs, run_study_locally

    spec = load_study(file)
    service = _service(db, mlflow)
    try:
        info = run_study_locally(service, spec, workers=workers, new=new, console=console)
    except NotEnoughGPUs as exc:
        fail(str(exc))
    _print_study(info)
    _study_results(service, info)
    _write_report(service, info.id, out)


@app.command()
def confirm(
    study: str = StudyArgument,
    variants: Optional[str] = typer.Option(
        None, help="variants to re-run, comma-separated (default: all); the reference always runs"
    ),
    seeds: Optional[int] = typer.Option(None, min=2, help="fresh seeds (default: as many as the study's first look)"),
    submit_only: bool = typer.Option(
        False, help="submit the confirmation only; workers run it ('krpo-bench status' shows it)"
    ),
    workers: int = typer.Option(0, help="local worker processes (0: one per GPU, or 2 on CPU)"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
) -> None:
    """Confirm an ablation on fresh seeds: a linked study re-runs the chosen variants and the reference on seeds no
    trial of it used; prints the confirmation alone (the pre-declared test), pooled with the original, and their
    heterogeneity."""
    from krpo_bench.service.studies import StudyError, stored_spec

    service = _service(db, mlflow)
    study_id = _study_id(service, study)
    chosen = [name.strip() for name in variants.split(",") if name.strip()] if variants is not None else None
    commands = None
    if not submit_only:
        from krpo_bench.service.local import NotEnoughGPUs, local_worker_commands

        try:
            commands = local_worker_commands(
                service, workers, stored_spec(service.get(study_id).spec).resources.gpus_per_trial
            )
        except NotEnoughGPUs as exc:
            fail(str(exc))
    try:
        info = service.confirm(study_id, chosen, seeds)
    except (StudyError, SpecError) as exc:
        fail(str(exc))
    if commands is None:
        _print_study(info)
        _print_confirmed(service, info.id)
        return
    from krpo_bench.service.local import run_submitted_locally

    info = run_submitted_locally(
        service,
        info,
        commands,
        console,
        f"'krpo-bench resume {info.id}' and a worker ('krpo-bench worker --exit-when-idle') finish it",
    )
    _print_study(info)
    _print_confirmed(service, info.id)
    _replication_tables(service, info.id)


@app.command()
def compare(
    studies: list[str] = typer.Argument(
        ..., help="studies (id, unique id prefix, name or name~N) whose trials to pool"
    ),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
) -> None:
    """Pool the trials of several studies that ran identical configs (seed and names aside) and print the results
    table: an arm is labelled as in the first study that has it; a config and seed run twice count once."""
    from krpo_bench.service.replication import compare as pooled_analysis
    from krpo_bench.service.studies import StudyError

    service = _service(db, mlflow)
    ids = list(dict.fromkeys(_study_id(service, ref) for ref in studies))
    try:
        analysis = pooled_analysis(service, ids)
    except StudyError as exc:
        fail(str(exc))
    console.print(f"pooled {sum(v.n for v in analysis.variants)} finished trials of {len(ids)} studies by config")
    _analysis_table(analysis)


@app.command()
def reanalyze(
    file: Path = typer.Argument(..., help="a summary.json that a report wrote (this release's or an older one's)"),
    margin: Optional[float] = typer.Option(
        None, help="equivalence margin as a fraction, 0.02 = ±2 points (default: the file's, else its target effect)"
    ),
    target_effect: Optional[float] = typer.Option(
        None, help="the effect worth detecting, as a fraction (default: the file's)"
    ),
    reference: Optional[str] = typer.Option(None, help="the reference variant (default: the file's)"),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="also write the analysis here, as a report's summary.json holds it"
    ),
) -> None:
    """Re-analyse a published summary.json with this release's analysis (verdicts: a difference, equivalence
    within the margin, or undecided; Holm over the study's comparisons) from the per-seed values it holds;
    prints the results table and the verdicts."""
    from pydantic import ValidationError

    from krpo_bench.analysis.analyze import AnalysisSettings, analyze
    from krpo_bench.analysis.records import records_from_summary, summary_order_pairs, summary_settings

    for option, value in (("--margin", margin), ("--target-effect", target_effect)):
        if value is not None and not value > 0:
            fail(f"{option} must be above 0 (a fraction: 0.02 is 2 points), got {value}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{file}: cannot read file: {exc.strerror}", 1)
    except ValueError as exc:
        fail(f"{file}: not a JSON file: {exc}", 1)
    overrides = {
        key: value
        for key, value in (("reference", reference), ("target_effect", target_effect), ("equivalence_margin", margin))
        if value is not None
    }
    try:
        records = records_from_summary(data)
        settings = AnalysisSettings(**(summary_settings(data) | overrides))
        order_pairs = summary_order_pairs(data)
    except ValidationError as exc:
        fail(f"{file}: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 1)
    except (ValueError, TypeError) as exc:
        fail(f"{file}: {exc}", 1)
    analysis = analyze(records, settings, order_pairs)
    study = data["study"] if isinstance(data.get("study"), dict) else {}
    console.print(
        f"re-analysed {file} (study {study.get('study_name')!r}): {settings.metric} of {len(records)} trials in "
        f"{len(analysis.variants)} variant groups, reference {settings.reference}, equivalence margin "
        f"±{settings.margin * 100:g} points",
        soft_wrap=True,
    )
    if data.get("looks"):
        console.print(
            f"note: the study added seeds look by look ({len(data['looks'])} taken); this reads all its seeds at once "
            "(fixed size, the looks' levels not applied)",
            soft_wrap=True,
        )
    _analysis_table(analysis)
    for compared in analysis.order_checks:
        console.print(compared.sentence)
    if json_out is not None:
        import pandas as pd

        from krpo_bench.dashboards.report import Summary

        summary = Summary(
            study.get("study_id"),
            study.get("study_name"),
            study.get("experiment_ids", []),
            study.get("status_counts", {}),
            analysis,
            data.get("cost", []),
            pd.DataFrame(),
        )
        json_out.write_text(json.dumps(summary.to_json(), indent=2, allow_nan=False), encoding="utf-8")
        console.print("analysis:", styled(json_out, "bold"))


@app.command()
def probe(
    file: Path = typer.Argument(..., help="probe YAML (kind: probe)"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
    out: Optional[Path] = typer.Option(None, help="report folder (default: <data home>/reports/<probe id>)"),
) -> None:
    """Gradient-quality probe: each estimator's one-batch policy gradient against a reference gradient (``--db``:
    where the study lies whose trial's checkpoint the probe names)."""
    from krpo_bench.probe.checkpoint import CheckpointNotFound
    from krpo_bench.probe.spec import CheckpointRef
    from krpo_bench.service.db import StudyKind

    kind, spec = load_any(file)
    if kind is None or kind.kind is not StudyKind.PROBE:
        fail(f"{file} is not a probe (kind: probe); run studies with 'krpo-bench run {file}'")
    source = None
    if isinstance(spec.checkpoint, CheckpointRef):
        try:
            source = _service(db, None).resolve_checkpoint(spec.checkpoint)
        except CheckpointNotFound as exc:
            fail(str(exc))
    _run_probe(spec, mlflow, out, source)


def _run_probe(spec, mlflow: Optional[str], out: Optional[Path], source) -> None:
    from krpo_bench.probe.run import run_probe

    console.print(
        "probe ",
        styled(spec.name, "bold"),
        f": {spec.batches} batches, reference {spec.reference.prompts} x {spec.reference.group_size} rollouts",
        sep="",
    )
    if source is not None:
        console.print(f"checkpoint: trial {source.trial_id}, step {source.step} ({source.folder})")
    try:
        result = run_probe(
            spec,
            tracking_uri=mlflow,
            out=out,
            on_batch=lambda b: console.print(f"  batch {b}/{spec.batches}"),
            source=source,
        )
    except ValueError as exc:
        fail(str(exc))
    _probe_table(spec, result)


def _probe_table(spec, result) -> None:
    """Print a probe's table, its loss normalisation, wall time, MLflow run and report folder."""
    from krpo_bench.probe.report import COLUMNS, NAME_COLUMNS, table_cells

    table = Table(
        title=f"gradient quality against the reference (rloo, no std; split-half cosine {result.reference_split_cosine:.3f})"
    )
    for key, label, _ in COLUMNS:
        if key in NAME_COLUMNS:
            name_column(table, label)
        else:
            table.add_column(label)
    for row in result.rows:
        table.add_row(*table_cells(row))
    print_table(table)
    console.print(f"loss {spec.loss_type}: {result.length_normalisation}")
    console.print(
        f"wall time {result.wall_time_s:.1f} s; MLflow run {result.mlflow_run_id}; report:",
        styled(f"{result.report_dir}/index.html", "bold"),
    )


def _write_report(service, study_id: str, out: Optional[Path]) -> None:
    from krpo_bench.dashboards.study import report_study

    try:
        path = report_study(service, study_id, out)
    except ValueError as exc:  # e.g. a probe study whose job has not succeeded
        fail(str(exc))
    console.print("full report:", styled(path, "bold"))


@app.command()
def report(
    study: str = StudyArgument,
    out: Optional[Path] = typer.Option(None, help="report folder (default: <data home>/reports/<study id>)"),
    db: Optional[str] = DbOption,
    mlflow: Optional[str] = MlflowOption,
) -> None:
    """Write a study's report: one self-contained HTML file, PNG figures, CSV and JSON numbers."""
    service = _service(db, mlflow)
    _write_report(service, _study_id(service, study), out)


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="print the settings as JSON")) -> None:
    """Print the effective settings and where each comes from (environment > KRPO_BENCH_CONFIG file > default)."""
    from krpo_bench.settings import get_settings

    rows = get_settings().describe()  # unusable settings were refused before any command ran
    if as_json:
        print(json.dumps({r["key"]: {k: v for k, v in r.items() if k != "key"} for r in rows}, indent=2))
        return
    width = max(len(r["env"]) + len(r["value"]) for r in rows) + 2
    for row in rows:  # shell syntax, so the output can be pasted into an env file (secrets are masked)
        line = f"{row['env']}={row['value']}" if row["value"] not in ("unset", "none") else f"# {row['env']} unset"
        console.print(f"{line:<{width}} # {row['key']}: {row['source']}", soft_wrap=True)


from krpo_bench.api.serve import serve as _serve  # noqa: E402
from krpo_bench.api.serve import token_app as _token_app  # noqa: E402

app.command(name="serve")(_serve)
app.add_typer(_token_app, name="token")

if __name__ == "__main__":
    app()
