"""The child process that runs one claimed job: ``python -m krpo_bench.service.child JOB.json``.

A worker usually forks it from a warm server instead (``krpo_bench.service.forkserver``), which
calls :func:`main` with its own test of the worker being alive.

It trains the trial (resuming from its newest checkpoint), records the MLflow run id on the job
(fenced by attempt), reports eval values to Optuna for pruning, stops cleanly on SIGTERM or when
its parent dies (checkpointing, so the attempt that reclaims the job resumes there), and writes
its outcome to the result file named in the job file. The parent worker owns the job's final
state; a crash or OOM here is seen by the parent as a non-zero exit.

Started by ``krpo_bench.service.launch`` it is one rank of a multi-process trial: every rank
trains; only the main one talks to the database, Optuna and MLflow and writes the result file.
Stopping and pruning are decided for all ranks at once, so they leave training at the same step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from krpo_bench.service.launch import die_with_parent, expected_parent


def main(job_file: str, worker_alive: Callable[[], bool] | None = None) -> int:
    """Run the job file's trial; ``worker_alive`` tells whether the worker that owns the job still
    runs (default: this process still has the parent it started with). Returns the exit code."""
    if worker_alive is None:
        # Die with the parent (the worker armed this for a one-process child, a rank arms it here),
        # and leave at once if the parent died before it was armed: nothing would stop us then.
        die_with_parent()
        parent = expected_parent()

        def worker_alive() -> bool:
            return os.getppid() == parent

    def orphaned() -> bool:
        return not worker_alive()

    if orphaned():
        return 1  # the parent died while we started: its lease will be reclaimed, do not race that
    payload = json.loads(Path(job_file).read_text())
    stop_requested = False

    def should_stop() -> bool:
        # SIGTERM (from the worker, or from the launcher to every rank), or the parent died (we were
        # re-parented): nobody heartbeats our lease any more, so checkpoint and stop rather than race
        # the attempt that will reclaim it. Any rank stopping stops all of them, at the same step.
        return any_rank(stop_requested or orphaned())

    def request_stop(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])  # blocked until now in a forked trial

    import torch

    from krpo_bench.training.distributed import any_rank, main_decides, this_rank
    from krpo_bench.service.studies import StudyService
    from krpo_bench.settings import trial_folder
    from krpo_bench.spec.trial import TrialSpec
    from krpo_bench.training.trial import run_trial

    if payload.get("cpu_threads"):
        torch.set_num_threads(payload["cpu_threads"])
    if orphaned():
        return 1  # without PR_SET_PDEATHSIG (not Linux) the parent may have died while we imported
    rank = this_rank()
    job = SimpleNamespace(**payload["job"])
    service = StudyService(payload["db_url"], payload["mlflow_uri"], migrate=False) if rank.is_main else None
    config = job.config
    if "probe" in config:  # a probe study's one job: the probe in place of a trial
        from krpo_bench.service.probe_job import run_probe_job

        return run_probe_job(job, service, payload, should_stop)
    spec = TrialSpec.model_validate(config["trial"])
    run_dir = trial_folder(spec.resolved_id())
    result_path = Path(payload["result_file"])

    def on_eval(step: int, value: float) -> bool:
        return main_decides(service is not None and service.report_intermediate(job, step, value))

    try:
        result = run_trial(
            spec,
            run_dir=run_dir,
            tracking_uri=payload["mlflow_uri"],
            parent_run_id=config.get("parent_run_id"),
            tags={**config.get("tags", {}), "krpo.job_id": job.id, "krpo.processes": str(rank.world_size)},
            should_stop=should_stop,
            on_eval=on_eval,
            on_run_created=lambda run_id: service.queue.set_mlflow_run(job.id, job.attempt, run_id),
            mlflow_run_id=job.mlflow_run_id,
        )
    except Exception as exc:
        if rank.is_main:
            result_path.write_text(json.dumps({"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}))
        traceback.print_exc()
        return 1
    if rank.is_main:
        result_path.write_text(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
