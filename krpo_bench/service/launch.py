"""How a worker starts the process(es) of one job, and how each stays tied to its parent.

A one-process job runs ``python -m krpo_bench.service.child JOB.json``. A job of N > 1 processes runs
``python -m krpo_bench.service.launch N JOB.json``: this module as the launcher, which runs
accelerate's multi-process launcher (torchrun underneath) in-process, so every rank is a direct
child of the launcher. On CPU (no visible GPU, ``ACCELERATE_USE_CPU``) the same launcher starts N
gloo ranks: accelerate's ``--cpu`` flag would start one process unless MPI is set up.

Process tree and signals:
- worker -> launcher -> ranks (or worker -> fork server -> forked trial). Every trial process dies
  with the worker the one same way (:func:`die_with_worker`): its stdin is the read end of a pipe
  whose only write end the worker holds, and a thread SIGKILLs the process when that pipe reaches
  end of file. Why this one: the pipe closes however the worker dies (SIGKILL, OOM, SLURM's kill),
  whoever the process's parent is (the fork server, the launcher: PR_SET_PDEATHSIG follows the parent
  thread, not the worker) and with no start-up race; torchrun's ranks inherit stdin, not other fds.
- SIGTERM to the launcher: torchrun sends it to every rank, waits up to ``SHUTDOWN_TIMEOUT_S``
  (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` if set), then SIGKILLs. The ranks agree on the step to stop
  at (``krpo_bench.training.distributed.any_rank``), checkpoint together and exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
SHUTDOWN_TIMEOUT_S = 180  # time the ranks get to finish their step and checkpoint after SIGTERM
WORKER_PIPE_FD = 0  # a trial process's stdin: the worker's pipe, never written


class TrialProcess(Protocol):
    """The process(es) of one running trial, as the worker drives them; started when made."""

    pid: int

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: until it exits); the exit code, or None."""

    def terminate(self) -> None:
        """SIGTERM: checkpoint and stop (nothing once it has exited)."""

    def kill(self) -> None:
        """SIGKILL (nothing once it has exited)."""


def die_with_worker() -> None:
    """SIGKILL this process once the worker's pipe (:data:`WORKER_PIPE_FD`) reaches end of file:
    the worker has died. Armed first thing by every trial process; a worker already gone is seen at once."""

    def watch() -> None:
        while os.read(WORKER_PIPE_FD, 1):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-worker", daemon=True).start()


class SpawnedTrial(TrialProcess):
    """A trial run as a fresh interpreter (``trial_command``): its own session, output appended to
    its log file, stdin the worker's pipe (:func:`die_with_worker`)."""

    def __init__(self, job_file: Path, env: Mapping[str, str], log_file: Path, processes: int = 1) -> None:
        read_end, self._worker_end = os.pipe()
        try:
            with open(log_file, "ab") as log:
                self._process = subprocess.Popen(
                    trial_command(job_file, processes),
                    env=dict(env),
                    stdin=read_end,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except BaseException:
            os.close(self._worker_end)
            raise
        finally:
            os.close(read_end)
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._ended(self._process.poll())

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._ended(self._process.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        """SIGKILL the launcher, and close the pipe: each of its ranks kills itself."""
        self._process.kill()
        self._close_pipe()

    def _ended(self, code: int | None) -> int | None:
        if code is not None:
            self._close_pipe()  # ranks a launcher left behind go with it
        return code

    def _close_pipe(self) -> None:
        if self._worker_end >= 0:
            os.close(self._worker_end)
            self._worker_end = -1


def visible_devices(devices: list[str], parent_visible: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a trial on ``devices`` (CUDA ordinals as the worker sees them):
    the worker's own entries at those ordinals when it is itself restricted (a SLURM allocation,
    ``CUDA_VISIBLE_DEVICES=2,3``), so ordinal 0 is the first GPU it was given, not the machine's."""
    if parent_visible is None:
        return ",".join(devices)
    entries = [g.strip() for g in parent_visible.split(",") if g.strip()]
    outside = [d for d in devices if not (d.isdigit() and int(d) < len(entries))]
    if outside:
        raise ValueError(
            f"GPU(s) {', '.join(outside)} not among the {len(entries)} this worker may use (CUDA_VISIBLE_DEVICES={parent_visible})"
        )
    return ",".join(entries[int(d)] for d in devices)


def trial_command(job_file: Path, processes: int) -> list[str]:
    """The command line that runs a job file with ``processes`` ranks."""
    if processes <= 1:
        return [sys.executable, "-m", "krpo_bench.service.child", str(job_file)]
    return [sys.executable, "-m", "krpo_bench.service.launch", str(processes), str(job_file)]


def accelerate_arguments(processes: int, job_file: str) -> list[str]:
    """``accelerate launch`` arguments for ``processes`` ranks of the child on this machine. Every
    setting a user's accelerate default config could change is given, so that file cannot move the
    ranks to other GPUs or change their precision (the trial sets its own)."""
    return [
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--machine_rank",
        "0",
        "--main_process_port",
        "0",  # a free port: several trials can launch on one machine
        "--gpu_ids",
        "all",  # the GPUs the worker left visible
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--log_dir",
        str(Path(job_file).with_suffix(".ranks")),  # torchrun's rank folders, not in /tmp
        "-m",
        "krpo_bench.service.child",
        job_file,
    ]


def main(processes: int, job_file: str) -> int:
    """The launcher: runs the ranks through accelerate and returns when they have all exited."""
    os.environ.setdefault(SHUTDOWN_TIMEOUT_ENV, str(SHUTDOWN_TIMEOUT_S))
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        launch_command(launch_command_parser().parse_args(accelerate_arguments(processes, job_file)))
    except SignalException as stop:  # torchrun passed the signal on and the ranks have exited
        return 128 + stop.sigval
    return 0


if __name__ == "__main__":
    die_with_worker()
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
