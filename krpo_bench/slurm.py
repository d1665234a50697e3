"""A SLURM worker array: the batch script ``krpo-bench slurm`` writes, and its submission.

:func:`worker_script` is a pure function from :class:`SlurmOptions` and the settings to export to the
text of an ``sbatch`` script; :func:`submit` hands that text to ``sbatch``. Each array task runs one
``krpo-bench worker`` (every GPU and CPU of its allocation, ``--exit-when-idle``) in the background
of the batch shell, which forwards SIGTERM to it: SLURM sends the shell SIGTERM ``grace_s`` seconds
before the time limit (``--signal=B:TERM@grace``) and at once on ``scancel`` or preemption, and the
worker then checkpoints its trials and hands them back to the queue. ``--requeue`` brings preempted
tasks back.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from krpo_bench.settings import VARS_BY_KEY, get_settings

MAX_WORKERS = 1000  # SLURM's default MaxArraySize is 1001 (task ids 0-1000)
MAX_SIGNAL_LEAD_S = 65535  # sbatch --signal's limit
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_URL_PASSWORD = re.compile(r"://[^:/@\s]*:[^@\s]+@")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class SlurmError(ValueError):
    """Options that cannot make a worker array, or an ``sbatch`` that refused it; the message names
    the option."""


@dataclass(frozen=True)
class SlurmOptions:
    """What one worker array asks of SLURM (``--workers`` tasks, each one worker)."""

    workers: int = 1
    time: str = "24:00:00"
    grace_s: int = 180
    gpus_per_worker: int = 0
    cpus_per_worker: int = 4
    slots_per_gpu: str = "1"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "krpo-bench"
    output: str = "krpo-bench-%A_%a.out"
    python: str = sys.executable


def time_limit_s(text: str) -> int:
    """Seconds in a SLURM time limit (``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours``, ``days-hours:minutes``, ``days-hours:minutes:seconds``)."""
    match = _TIME.match(text.strip())
    if not match:
        raise SlurmError(f"--time {text!r} is not a SLURM time limit (minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]])")
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:
        seconds = first * 3600 + second * 60 + third
    elif second is not None:
        seconds = first * 60 + second
    else:
        seconds = first * 60
    if seconds < 60:
        raise SlurmError(f"--time {text!r} is under SLURM's smallest time limit, 1 minute")
    return seconds


def check(options: SlurmOptions) -> None:
    """Raise SlurmError naming the first option SLURM or the worker would refuse."""
    if not 1 <= options.workers <= MAX_WORKERS:
        raise SlurmError(f"--workers must be 1 to {MAX_WORKERS}, got {options.workers}")
    limit = time_limit_s(options.time)
    if not 1 <= options.grace_s <= MAX_SIGNAL_LEAD_S or options.grace_s >= limit:
        raise SlurmError(
            f"--grace must be 1 to {MAX_SIGNAL_LEAD_S} seconds and below the time limit "
            f"({limit} s), got {options.grace_s}"
        )
    if options.gpus_per_worker < 0:
        raise SlurmError(f"--gpus-per-worker must be 0 (a CPU worker) or more, got {options.gpus_per_worker}")
    if options.cpus_per_worker < 1:
        raise SlurmError(f"--cpus-per-worker must be 1 or more, got {options.cpus_per_worker}")
    if options.slots_per_gpu != "auto" and not (options.slots_per_gpu.isdigit() and int(options.slots_per_gpu) > 0):
        raise SlurmError(f"--slots-per-gpu must be a positive integer or auto, got {options.slots_per_gpu!r}")
    for flag, value in (
        ("--partition", options.partition),
        ("--account", options.account),
        ("--qos", options.qos),
        ("--job-name", options.job_name),
    ):
        if value is not None and not _NAME.match(value):
            raise SlurmError(f"{flag} {value!r} may hold only letters, digits and _ . + -")
    if not options.output or any(c in options.output for c in "\n\r\"'"):
        raise SlurmError(f"--output {options.output!r} must be a non-empty file pattern without quotes or newlines")


def exported_settings(db: str | None = None, mlflow: str | None = None) -> dict[str, str]:
    """The variables every worker of the array needs, from this process's settings (``db`` and
    ``mlflow`` override theirs): the data home, the job database and MLflow, or the config file
    (``KRPO_BENCH_CONFIG``) for those it sets. A password in a URL is refused: SLURM keeps a job's
    script where others may read it."""
    settings = get_settings()
    given = {"db": db, "mlflow_tracking_uri": mlflow}
    env = {"KRPO_BENCH_CONFIG": str(settings.config_file)} if settings.config_file else {}
    for key in ("home", "db", "mlflow_tracking_uri"):
        if given.get(key) or not settings.sources.get(key, "").startswith("file "):
            env[VARS_BY_KEY[key].env] = str(given.get(key) or getattr(settings, key))
    for name, value in env.items():
        if _URL_PASSWORD.search(value):
            raise SlurmError(
                f"{name} holds a password, which would be written into the job script: keep it in "
                "~/.pgpass (PostgreSQL) or in the KRPO_BENCH_CONFIG file instead"
            )
    return env


def worker_script(options: SlurmOptions, env: Mapping[str, str]) -> str:
    """The sbatch script of a worker array: one worker per array task, ``env`` exported."""
    check(options)
    directives = [
        f"--job-name={options.job_name}",
        f"--array=0-{options.workers - 1}",
        "--ntasks=1",
        f"--cpus-per-task={options.cpus_per_worker}",
        *([f"--gres=gpu:{options.gpus_per_worker}"] if options.gpus_per_worker else []),
        f"--time={options.time}",
        *([f"--partition={options.partition}"] if options.partition else []),
        *([f"--account={options.account}"] if options.account else []),
        *([f"--qos={options.qos}"] if options.qos else []),
        f"--signal=B:TERM@{options.grace_s}",
        "--requeue",
        "--open-mode=append",
        f"--output={options.output}",
    ]
    python = shlex.quote(options.python)
    gpus = "auto" if options.gpus_per_worker else "cpu"
    lines = [
        "#!/bin/bash",
        f"# {options.workers} array tasks written by `krpo-bench slurm`: each runs one worker on",
        "# the GPUs and CPUs of its allocation until the queue is empty. SIGTERM (scancel, preemption, or",
        f"# {options.grace_s} s before the time limit) makes it checkpoint its trials and hand them back.",
        *(f"#SBATCH {d}" for d in directives),
        "",
        "set -uo pipefail",
        *(f"export {name}={shlex.quote(value)}" for name, value in env.items()),
        f"{python} -m krpo_bench.cli config",
        f"{python} -m krpo_bench.cli worker --gpus {gpus} --slots-per-gpu {options.slots_per_gpu} --exit-when-idle &",
        "worker=$!",
        "trap 'kill -TERM \"$worker\" 2>/dev/null' TERM  # bash runs it during 'wait', not a foreground command",
        'wait "$worker"',
        "status=$?",
        "while kill -0 \"$worker\" 2>/dev/null; do  # a forwarded SIGTERM ended 'wait': the worker is handing back",
        '  wait "$worker"',
        "  status=$?",
        "done",
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)


def submit(script: str, env: Mapping[str, str] | None = None) -> str:
    """Submit ``script`` with ``sbatch`` and return the array's job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("sbatch not found: run 'krpo-bench slurm' on a SLURM login node (or add --dry-run)")
    done = subprocess.run([sbatch, "--parsable"], check=False, input=script, text=True, capture_output=True, env=env)
    if done.returncode != 0:
        raise SlurmError(f"sbatch refused the worker array: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]
