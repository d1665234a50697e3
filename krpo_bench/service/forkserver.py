"""One-process trials forked from a server that has already imported torch, transformers and TRL.

A worker starts Python's multiprocessing fork server once (``warm_up``), which imports ``PRELOAD``
and nothing else: no CUDA call, so every trial forked from it initialises CUDA itself, on the GPUs its
``CUDA_VISIBLE_DEVICES`` names. A trial (``ForkedTrial``) is then a fork of that server instead of a
fresh interpreter: it skips seconds of imports and reaches its first training step at once.

The forked trial behaves as the ``python -m krpo_bench.service.child`` process it replaces: its own
session, the worker's environment for this job, stdout and stderr appended to its log file, SIGTERM
for a checkpoint-and-stop, a non-zero exit code (or a signal) for a crash or OOM kill. It dies with
the worker as every trial process does (``krpo_bench.service.launch.die_with_worker``): its stdin is
multiprocessing's parent sentinel, a pipe whose write end only the worker holds.

The server never sees SIGTERM (it starts with the signal blocked): stopping a worker's process group
must let the trials checkpoint, not kill the server under them. It exits once the worker and every
trial it forked are gone (multiprocessing's "alive" pipe).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from krpo_bench.service.launch import WORKER_PIPE_FD, TrialProcess, die_with_worker

PRELOAD = [
    "torch",
    "transformers",
    "trl",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "krpo_bench.service.child",
    "krpo_bench.service.forkserver",
    "krpo_bench.service.studies",
    "krpo_bench.training.trial",
    "krpo_bench.models.loading",
]
# Before the preload: ask torch to count GPUs through NVML, never the CUDA runtime, should any
# import check for CUDA; a CUDA runtime initialised before a fork is unusable in the forked process.
NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def warm_up() -> None:
    """Start the fork server (if not running) and wait until it has imported ``PRELOAD``. Call it
    from the main thread before claiming jobs: a job's lease should not pay for the imports."""
    os.environ.setdefault(NVML_CHECK_ENV, "1")
    context = _context()
    multiprocessing.resource_tracker.ensure_running()  # first: starting it unblocks SIGTERM again
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    try:
        multiprocessing.forkserver.ensure_running()  # the server inherits the blocked SIGTERM
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    probe = context.Process(target=int, daemon=True)
    probe.start()  # answered once the server has finished its imports
    probe.join()


def _become_trial_process(env: dict[str, str], log_file: str) -> None:
    """In a process forked from the server: become what ``python -m krpo_bench.service.child`` would
    be (its own session, dying with the worker, output to the log file, the job's environment).

    SIGTERM stays blocked, as the server had it, until the child's handler is in place: one sent
    meanwhile (by the worker, or to the worker's process group before ``setsid``) is then a stop
    request, not lost and not a crash."""
    os.setsid()
    os.dup2(multiprocessing.parent_process().sentinel, WORKER_PIPE_FD)
    die_with_worker()
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(env)


def _run_forked(job_file: str, env: dict[str, str], log_file: str) -> None:
    """The forked trial process: run the job file's trial as the child module would."""
    _become_trial_process(env, log_file)
    from krpo_bench.service import child

    raise SystemExit(child.main(job_file))


class ForkedTrial(TrialProcess):
    """A one-process trial forked from the warm server."""

    def __init__(self, job_file: Path, env: Mapping[str, str], log_file: Path) -> None:
        self._process = _context().Process(target=_run_forked, args=(str(job_file), dict(env), str(log_file)))
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int | None:
        self._process.join(timeout)
        return self._process.exitcode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)
