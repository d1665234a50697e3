"""The child process that runs one claimed job: ``python -m krpo_bench.service.child JOB.json``.

It trains the trial (resuming from its newest checkpoint), records the MLflow run id on the job
(fenced by attempt), reports eval values to Optuna for pruning, stops cleanly on SIGTERM or when
its worker dies (checkpointing, so the attempt that reclaims the job resumes there), and writes
its outcome to the result file named in the job file. The parent worker owns the job's final
state; a crash or OOM here is seen by the parent as a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace


def main(job_file: str) -> int:
    payload = json.loads(Path(job_file).read_text())
    stop_requested = False
    worker_pid = os.getppid()

    def should_stop() -> bool:
        # SIGTERM from the worker, or the worker died (we were re-parented): nobody heartbeats our
        # lease any more, so checkpoint and stop rather than race the attempt that will reclaim it.
        return stop_requested or os.getppid() != worker_pid

    def request_stop(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    import torch

    from krpo_bench.service.studies import StudyService
    from krpo_bench.settings import data_home
    from krpo_bench.spec.trial import TrialSpec
    from krpo_bench.training.trial import run_trial

    if payload.get("cpu_threads"):
        torch.set_num_threads(payload["cpu_threads"])
    job = SimpleNamespace(**payload["job"])
    service = StudyService(payload["db_url"], payload["mlflow_uri"], migrate=False)
    config = job.config
    spec = TrialSpec.model_validate(config["trial"])
    run_dir = data_home() / "trials" / spec.resolved_id()
    result_path = Path(payload["result_file"])
    if os.getppid() != worker_pid:
        return 1  # the worker died while we started up: its lease will be reclaimed, do not race that
    try:
        result = run_trial(
            spec,
            run_dir=run_dir,
            tracking_uri=payload["mlflow_uri"],
            parent_run_id=config.get("parent_run_id"),
            tags={**config.get("tags", {}), "krpo.job_id": job.id},
            should_stop=should_stop,
            on_eval=lambda step, value: service.report_intermediate(job, step, value),
            on_run_created=lambda run_id: service.queue.set_mlflow_run(job.id, job.attempt, run_id),
            mlflow_run_id=job.mlflow_run_id,
        )
    except Exception as exc:
        result_path.write_text(json.dumps({"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}))
        traceback.print_exc()
        return 1
    result_path.write_text(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
