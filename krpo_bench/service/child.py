"""The child process that runs one claimed job: ``python -m krpo_bench.service.child JOB.json``.

A worker usually forks it from a warm server instead (``krpo_bench.service.forkserver``), which
calls :func:`main`. The job file holds a :class:`TrialPayload`, written by the worker and read here.

It trains the trial (resuming from its newest checkpoint), records the MLflow run id on the job
(fenced by attempt), reports eval values to Optuna for pruning, stops cleanly on SIGTERM
(checkpointing, so the attempt that takes the job up again resumes there), and writes its outcome
to the payload's result file. It dies with its worker (``krpo_bench.service.launch.die_with_worker``).
The parent worker owns the job's final state; a crash or OOM here is seen by the parent as a
non-zero exit.

Started by ``krpo_bench.service.launch`` it is one rank of a multi-process trial: every rank
trains; only the main one talks to the database, Optuna and MLflow and writes the result file.
Stopping and pruning are decided for all ranks at once, so they leave training at the same step.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from krpo_bench import tags as krpo_tags
from krpo_bench.service.launch import die_with_worker
from krpo_bench.service.queue import ClaimedJob


class TrialPayload(BaseModel):
    """What a worker hands the process(es) of one claimed job, as the job file's JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: ClaimedJob  # its config carries the study's MLflow ``parent_run_id``
    db_url: str
    mlflow_uri: str
    result_file: Path
    cpu_threads: int | None = None  # torch threads of a CPU trial (None: torch's default)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> TrialPayload:
        return cls.model_validate_json(text)


def main(job_file: str) -> int:
    """Run the job file's trial; returns the exit code."""
    payload = TrialPayload.from_json(Path(job_file).read_text())
    stop_requested = False

    def should_stop() -> bool:
        # SIGTERM (from the worker, or from the launcher to every rank). Any rank stopping stops
        # all of them, at the same step.
        return any_rank(stop_requested)

    def request_stop(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])  # blocked until now in a forked trial

    import torch

    from krpo_bench.service.kinds import job_handler
    from krpo_bench.service.studies import StudyService
    from krpo_bench.settings import trial_folder
    from krpo_bench.spec.trial import TrialSpec
    from krpo_bench.training.distributed import any_rank, main_decides, this_rank
    from krpo_bench.training.trial import run_trial

    if payload.cpu_threads:
        torch.set_num_threads(payload.cpu_threads)
    rank = this_rank()
    job = payload.job
    service = StudyService(payload.db_url, payload.mlflow_uri, migrate=False) if rank.is_main else None
    config = job.config
    runner = job_handler(config)
    if runner is not None:  # a job of a kind that runs something in place of a trial (a probe)
        job_payload = {"mlflow_uri": payload.mlflow_uri, "result_file": str(payload.result_file)}
        return runner.run_job(job, service, job_payload, should_stop)
    spec = TrialSpec.model_validate(config["trial"])
    run_dir = trial_folder(spec.resolved_id())
    result_path = payload.result_file

    def on_eval(step: int, value: float) -> bool:
        return main_decides(service is not None and service.report_intermediate(job, step, value))

    try:
        result = run_trial(
            spec,
            run_dir=run_dir,
            tracking_uri=payload.mlflow_uri,
            parent_run_id=config.get("parent_run_id"),
            tags={**config.get("tags", {}), krpo_tags.JOB_ID: job.id, krpo_tags.PROCESSES: str(rank.world_size)},
            should_stop=should_stop,
            on_eval=on_eval,
            on_run_created=lambda run_id: service.queue.set_mlflow_run(job.id, job.attempt, run_id),
            mlflow_run_id=job.mlflow_run_id,
        )
    except Exception as exc:
        if rank.is_main:
            result_path.write_text(
                json.dumps(
                    {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                )
            )
        traceback.print_exc()
        return 1
    if rank.is_main:
        result_path.write_text(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    die_with_worker()
    sys.exit(main(sys.argv[1]))
