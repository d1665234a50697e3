"""A probe study's one job, run by the trial child process (``krpo_bench.service.child``) in place
of a trial: same isolation, heartbeats (the worker's) and attempts.

A checkpoint named by trial (``checkpoint: {study, variant, seed, step, grid}``) is resolved here,
through the job database and in the worker's data home (``StudyService.resolve_checkpoint``); a
reference that names no kept checkpoint fails the attempt with the message naming its field.

The probe checks for a stop request (cancel, worker shutdown, timeout, a dead worker) after each of
its M batches. It keeps no checkpoint: a retried attempt re-runs it from scratch, which gives the
same numbers (prompts, rollouts and reward noise all follow the probe's seed) and continues the
same MLflow run.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from krpo_bench import tags as krpo_tags
from krpo_bench.analysis.model import json_ready
from krpo_bench.settings import data_home


class ProbeStopped(Exception):
    """The worker asked the probe to stop; it stopped between two batches."""


def run_probe_job(job: Any, service: Any, payload: dict[str, Any], should_stop: Callable[[], bool]) -> int:
    """Run the job's probe (a child of the study's MLflow run, tagged like a trial), write its
    outcome to the payload's result file (the probe's summary, or the error) and return the exit code."""
    from krpo_bench.probe.run import run_probe
    from krpo_bench.probe.spec import CheckpointRef, ProbeSpec
    from krpo_bench.service.kinds import ProbeKind

    result_path = Path(payload["result_file"])
    spec = ProbeSpec.model_validate(job.config[ProbeKind.job_config_key])

    def on_batch(done: int) -> None:
        if should_stop():
            raise ProbeStopped(f"stopped after batch {done} of {spec.batches}")

    try:
        source = service.resolve_checkpoint(spec.checkpoint) if isinstance(spec.checkpoint, CheckpointRef) else None
        result = run_probe(
            spec,
            tracking_uri=payload["mlflow_uri"],
            out=data_home() / "reports" / job.study_id,
            on_batch=on_batch,
            parent_run_id=job.config.get("parent_run_id"),
            tags={**job.config.get("tags", {}), krpo_tags.JOB_ID: job.id},
            mlflow_run_id=job.mlflow_run_id,
            on_run_created=lambda run_id: service.queue.set_mlflow_run(job.id, job.attempt, run_id),
            source=source,
        )
    except Exception as exc:
        result_path.write_text(
            json.dumps(
                {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            )
        )
        traceback.print_exc()
        return 1
    result_path.write_text(json.dumps({"status": "succeeded", **json_ready(result.to_json())}))
    return 0
