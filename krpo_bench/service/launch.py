"""How a worker starts the process(es) of one job, and how each stays tied to its parent.

A one-process job runs ``python -m krpo_bench.service.child JOB.json``. A job of N > 1 processes runs
``python -m krpo_bench.service.launch N JOB.json``: this module as the launcher, which runs
accelerate's multi-process launcher (torchrun underneath) in-process, so every rank is a direct
child of the launcher. On CPU (no visible GPU, ``ACCELERATE_USE_CPU``) the same launcher starts N
gloo ranks: accelerate's ``--cpu`` flag would start one process unless MPI is set up.

Process tree and signals:
- worker -> launcher -> ranks. Each process gets SIGKILL when its parent dies (PR_SET_PDEATHSIG:
  set by the worker for its child, by each rank for itself), so a killed worker takes the whole
  tree down. ``PARENT_PID_ENV`` names the pid a process's parent must have; a process whose
  parent died before it could arm the signal sees a different parent and exits.
- SIGTERM to the launcher: torchrun sends it to every rank, waits up to ``SHUTDOWN_TIMEOUT_S``
  (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` if set), then SIGKILLs. The ranks agree on the step to stop
  at (``krpo_bench.training.distributed.any_rank``), checkpoint together and exit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PARENT_PID_ENV = "KRPO_TRIAL_PARENT_PID"
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
SHUTDOWN_TIMEOUT_S = 180  # time the ranks get to finish their step and checkpoint after SIGTERM
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (the flag survives exec)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def expected_parent() -> int:
    """The pid this process's parent must have: ``PARENT_PID_ENV``, else the parent it has now."""
    return int(os.environ.get(PARENT_PID_ENV) or os.getppid())


def visible_devices(devices: list[str], parent_visible: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a trial on ``devices`` (CUDA ordinals as the worker sees them):
    the worker's own entries at those ordinals when it is itself restricted (a SLURM allocation,
    ``CUDA_VISIBLE_DEVICES=2,3``), so ordinal 0 is the first GPU it was given, not the machine's."""
    if parent_visible is None:
        return ",".join(devices)
    entries = [g.strip() for g in parent_visible.split(",") if g.strip()]
    outside = [d for d in devices if not (d.isdigit() and int(d) < len(entries))]
    if outside:
        raise ValueError(f"GPU(s) {', '.join(outside)} not among the {len(entries)} this worker may use (CUDA_VISIBLE_DEVICES={parent_visible})")
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
        "--num_processes", str(processes),
        "--num_machines", "1",
        "--machine_rank", "0",
        "--main_process_port", "0",  # a free port: several trials can launch on one machine
        "--gpu_ids", "all",  # the GPUs the worker left visible
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "--log_dir", str(Path(job_file).with_suffix(".ranks")),  # torchrun's rank folders, not in /tmp
        "-m", "krpo_bench.service.child", job_file,
    ]


def main(processes: int, job_file: str) -> int:
    """The launcher (started by the worker, which armed its PR_SET_PDEATHSIG): runs the ranks
    through accelerate and returns when they have all exited."""
    if os.getppid() != expected_parent():
        return 1  # the worker died while we started: its lease will be reclaimed, do not race that
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    os.environ.setdefault(SHUTDOWN_TIMEOUT_ENV, str(SHUTDOWN_TIMEOUT_S))
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        launch_command(launch_command_parser().parse_args(accelerate_arguments(processes, job_file)))
    except SignalException as stop:  # torchrun passed the signal on and the ranks have exited
        return 128 + stop.sigval
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
