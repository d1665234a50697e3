"""The embedded main job: submit a study, run it on local worker processes, show live progress."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.live import Live
from rich.text import Text

from krpo_bench.service.db import FINISHED_STUDY_STATUSES
from krpo_bench.service.studies import StudyInfo, StudyService
from krpo_bench.service.worker import available_cpus, cpu_threads_per_trial
from krpo_bench.spec.identity import study_file_key
from krpo_bench.spec.names import plain_console, styled
from krpo_bench.spec.study import StudySpec

LOG_EVERY_S = 30.0
"""Seconds between progress lines when the output is a log, not a terminal."""


class NotEnoughGPUs(ValueError):
    """The study's trials need more GPUs than this machine has."""


def local_worker_commands(
    service: StudyService, workers: int, gpus_per_trial: int = 1
) -> list[tuple[list[str], dict[str, str]]]:
    """Worker command lines (and environments) for this machine: one per GPU (one over all GPUs
    for multi-GPU trials), else CPU workers (multi-GPU trials then run as that many CPU processes)
    with the ``cpu_threads`` setting's torch threads each, by default the cores shared out."""
    import torch

    base = [sys.executable, "-m", "krpo_bench.cli", "worker", "--db", service.db_url, "--mlflow", service.mlflow_uri]
    gpus = torch.cuda.device_count()
    if gpus and gpus_per_trial > gpus:
        raise NotEnoughGPUs(f"resources.gpus_per_trial is {gpus_per_trial}, but this machine has {gpus} GPU(s)")
    if gpus and gpus_per_trial > 1:
        return [(base + ["--gpus", ",".join(map(str, range(gpus)))], dict(os.environ))]
    if gpus:
        count = workers or gpus
        return [(base + ["--gpus", str(i % gpus)], dict(os.environ)) for i in range(count)]
    count = workers or max(1, min(2, available_cpus(os.environ) // max(1, gpus_per_trial)))
    threads = str(cpu_threads_per_trial(count))
    env = dict(os.environ, KRPO_BENCH_CPU_THREADS=threads, OMP_NUM_THREADS=threads)
    return [(base + ["--gpus", "cpu", "--slots-per-gpu", "1"], env) for _ in range(count)]


def progress_line(info: StudyInfo, started: float) -> Text:
    """The study's name (as text, whatever it holds) and its counts, elapsed time and ETA."""
    c = info.counts
    done, running, queued = info.done, c.get("running", 0), c.get("queued", 0)
    elapsed = time.monotonic() - started
    eta = "?"
    if done and done < info.total:
        eta = f"{elapsed / done * (info.total - done):.0f} s"
    return Text.assemble(
        styled(info.name, "bold"),
        f": {done}/{info.total} done "
        f"(succeeded {c.get('succeeded', 0)}, pruned {c.get('pruned', 0)}, failed {c.get('failed', 0)}), "
        f"running {running}, queued {queued}; elapsed {elapsed:.0f} s, ETA {eta}",
    )


def _progress_log(console: Console, started: float, every_s: float = LOG_EVERY_S) -> Callable[[StudyInfo], None]:
    """For a log (output not a terminal): one progress line per change of the counts, at most every
    ``every_s`` seconds, and always the last."""
    last: dict[str, object] = {"at": -math.inf, "counts": None}

    def show(info: StudyInfo) -> None:
        now = time.monotonic()
        finished = info.status in FINISHED_STUDY_STATUSES
        if finished or (info.counts != last["counts"] and now - float(last["at"]) >= every_s):
            console.print(progress_line(info, started), soft_wrap=True)
            last.update(at=now, counts=info.counts)

    return show


def _wait(
    service: StudyService, info: StudyInfo, procs: list[subprocess.Popen], show: Callable[[StudyInfo], None]
) -> StudyInfo:
    """Poll the study until it finishes, showing its progress; fails when every worker has exited."""
    show(info)
    while info.status not in FINISHED_STUDY_STATUSES:
        time.sleep(1.0)
        info = service.get(info.id)
        show(info)
        if info.status not in FINISHED_STUDY_STATUSES and all(p.poll() is not None for p in procs):
            raise RuntimeError("every local worker exited; see 'krpo-bench status' for errors")
    return info


def run_study_locally(
    service: StudyService, spec: StudySpec, *, workers: int = 0, new: bool = False, console: Console | None = None
) -> StudyInfo:
    """Submit (or pick up the same file's earlier study), run it to the end on local workers."""
    console = console or plain_console()
    commands = local_worker_commands(service, workers, spec.resources.gpus_per_trial)
    key = None if new else study_file_key(spec)
    info = service.submit(spec, idempotency_key=key)
    if info.status != "succeeded":
        info = service.resume(info.id)
    return run_submitted_locally(service, info, commands, console, f"run the same command again to resume {info.id}")


def run_submitted_locally(
    service: StudyService,
    info: StudyInfo,
    commands: list[tuple[list[str], dict[str, str]]],
    console: Console,
    to_resume: str,
) -> StudyInfo:
    """Run a submitted study to the end on local workers (``commands``: `local_worker_commands`),
    showing its progress; on an interrupt its trials requeue and ``to_resume`` says how to go on."""
    records = service.ensure_mlflow(info.id)
    console.print(f"study {info.id}: {info.total} trials; MLflow experiment {records.experiment_id}")
    with _stopped_by_signals():
        procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for cmd, env in commands
        ]
        started = time.monotonic()
        try:
            if console.is_terminal:
                with Live(progress_line(info, started), console=console, refresh_per_second=2) as live:
                    info = _wait(service, info, procs, lambda i: live.update(progress_line(i, started)))
            else:
                info = _wait(service, info, procs, _progress_log(console, started))
        except KeyboardInterrupt:
            console.print(f"interrupted: trials checkpoint and requeue; {to_resume}")
            raise
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    p.kill()
    return info


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) stop a local run as Ctrl-C does: its
    workers get SIGTERM and hand their trials back, instead of outliving it. In the main thread only
    (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
