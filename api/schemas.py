"""Pydantic models of the API's requests and responses (with OpenAPI examples)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from krpo_bench.service.db import JobStatus, StudyStatus, WorkerStatus
from krpo_bench.service.queue import AttemptInfo, JobInfo, WorkerInfo
from krpo_bench.service.studies import StudyInfo
from krpo_bench.spec.study import MAX_TRIALS_PER_STUDY, Objective, StudySpec

_TIME = "2026-01-01T12:00:00Z"
_STUDY_ID = "0b8c2f6e-5b1a-4a52-9d0e-3f3f9a1c2d4e"
_JOB_ID = "7d1e9c52-8f0b-4b8e-a4a6-1c2b3d4e5f60"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _counts(counts: dict[str, int]) -> dict[str, int]:
    return {status.value: counts.get(status.value, 0) for status in JobStatus}


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class ErrorDetail(BaseModel):
    """One problem: where (dotted path in the spec or request), the value found, and the rule."""

    path: str
    value: Any = None
    message: str
    type: str


class ErrorResponse(BaseModel):
    """Every error the API answers (never a stack trace); quote ``request_id`` to the operator."""

    model_config = _examples({
        "error": "invalid_spec",
        "message": "the study spec is invalid",
        "request_id": "5f0c8d2a9b7e4c1d",
        "errors": [{"path": "base.training.max_steps", "value": 0, "message": "Input should be greater than or equal to 1", "type": "greater_than_equal"}],
    })

    error: str
    message: str
    request_id: str
    errors: list[ErrorDetail] = Field(default_factory=list)


_SUMMARY_EXAMPLE = {
    "id": _STUDY_ID,
    "name": "krpo-vs-grpo",
    "kind": "ablation",
    "status": "running",
    "priority": 0,
    "total": 4,
    "done": 1,
    "counts": {"queued": 2, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0, "pruned": 0},
    "created_at": _TIME,
    "optuna_study_name": f"krpo-{_STUDY_ID}",
    "mlflow_experiment_id": "3",
    "mlflow_parent_run_id": "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d",
}


class StudySummary(BaseModel):
    """A study and its progress (job counts per status)."""

    model_config = _examples(_SUMMARY_EXAMPLE)

    id: str
    name: str
    kind: Literal["ablation", "search", "probe"]
    status: StudyStatus
    priority: int
    total: int = Field(description="trials the study holds (a search: its budget x seeds per trial)")
    done: int = Field(description="trials in a final state")
    counts: dict[str, int] = Field(description="jobs per status")
    created_at: datetime
    optuna_study_name: str | None
    mlflow_experiment_id: str | None
    mlflow_parent_run_id: str | None

    @classmethod
    def of(cls, info: StudyInfo) -> StudySummary:
        return cls(**_summary_fields(info))


def _summary_fields(info: StudyInfo) -> dict[str, Any]:
    return {
        "id": info.id, "name": info.name, "kind": info.kind, "status": info.status, "priority": info.priority,
        "total": info.total, "done": info.done, "counts": _counts(info.counts), "created_at": info.created_at,
        "optuna_study_name": info.optuna_study_name, "mlflow_experiment_id": info.mlflow_experiment_id,
        "mlflow_parent_run_id": info.mlflow_parent_run_id,
    }


class StudyPage(BaseModel):
    """One page of studies, newest first; ``next_offset`` is null on the last page."""

    model_config = _examples({"items": [_SUMMARY_EXAMPLE], "limit": 50, "offset": 0, "next_offset": None})

    items: list[StudySummary]
    limit: int
    offset: int
    next_offset: int | None


class ComparisonStats(BaseModel):
    """A variant against the reference on the final held-out accuracy (fractions; null where undefined).

    ``analysis`` is ``paired`` when both ran the same seeds (differences seed by seed: paired t-interval
    ``diff_ci_*``, bootstrap ``diff_boot_ci_*``, paired t-test ``p_value``, exact Wilcoxon signed-rank
    ``rank_p_value``, share of seeds won ``prob_improvement``) and ``unpaired`` otherwise (Welch,
    Wilcoxon rank-sum, P(X > Y)). ``welch_*`` is the unpaired interval and test either way. ``mde`` is
    the smallest true difference these seeds detect with 80 % power at alpha 0.05, and
    ``seeds_needed`` the seeds (per variant when unpaired) that would detect ``target_effect``.
    """

    model_config = _examples({
        "reference": "grpo", "analysis": "paired", "n_variant": 3, "n_reference": 3, "diff": -0.008,
        "diff_ci_low": -0.044, "diff_ci_high": 0.027, "diff_boot_ci_low": -0.025, "diff_boot_ci_high": 0.0,
        "prob_improvement": 0.33, "prob_improvement_ci_low": 0.0, "prob_improvement_ci_high": 0.5,
        "p_value": 0.42, "rank_p_value": 1.0, "welch_diff": -0.008, "welch_ci_low": -0.05, "welch_ci_high": 0.034,
        "welch_p": 0.6, "mde": 0.051, "target_effect": 0.02, "seeds_needed": 8,
        "sentence": "no detectable difference between krpo and grpo (paired by seed, 3 seeds: -0.8 points, ...)",
    })

    reference: str
    analysis: Literal["paired", "unpaired"]
    n_variant: int
    n_reference: int
    diff: float | None
    diff_ci_low: float | None
    diff_ci_high: float | None
    diff_boot_ci_low: float | None
    diff_boot_ci_high: float | None
    prob_improvement: float | None
    prob_improvement_ci_low: float | None
    prob_improvement_ci_high: float | None
    p_value: float | None
    rank_p_value: float | None
    welch_diff: float | None
    welch_ci_low: float | None
    welch_ci_high: float | None
    welch_p: float | None
    mde: float | None
    target_effect: float
    seeds_needed: int | None
    sentence: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> ComparisonStats:
        return cls(**{k: _finite(v) if isinstance(v, float) else v for k, v in row.items()})


class VariantStats(BaseModel):
    """Final held-out accuracy of a variant's succeeded trials: mean and 95 % t-interval over seeds
    (null where undefined, e.g. fewer than two values), and in an ablation its comparison with the
    reference variant (null for the reference itself)."""

    model_config = _examples(
        {"n": 3, "mean": 0.47, "ci_low": 0.41, "ci_high": 0.53, "values": [0.45, 0.47, 0.49], "seeds": [0, 1, 2],
         "initial_mean": 0.39, "comparison": None}
    )

    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    values: list[float]
    seeds: list[int] = []
    initial_mean: float | None = None
    comparison: ComparisonStats | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> VariantStats:
        comparison = row.get("comparison")
        return cls(
            n=row["n"],
            mean=_finite(row["mean"]),
            ci_low=_finite(row["ci_low"]),
            ci_high=_finite(row["ci_high"]),
            values=row["values"],
            seeds=row.get("seeds", []),
            initial_mean=_finite(row.get("initial_mean", float("nan"))),
            comparison=ComparisonStats.of(comparison) if comparison is not None else None,
        )


class VariantSummary(VariantStats):
    """A variant's job counts and result statistics."""

    counts: dict[str, int]


class BestTrial(BaseModel):
    """The succeeded trial with the best objective value (the study's metric and direction)."""

    job_id: str
    trial_key: str
    variant: str
    seed: int
    optuna_trial_number: int | None
    metric: str
    value: float


class StudyDetail(StudySummary):
    """A study with its spec, best trial and per-variant summary."""

    model_config = _examples({
        **_SUMMARY_EXAMPLE,
        "spec": {"name": "krpo-vs-grpo", "kind": "ablation", "seeds": 2, "base": {"task": {"kind": "arithmetic"}}},
        "best_trial": {"job_id": _JOB_ID, "trial_key": "krpo|seed=0", "variant": "krpo", "seed": 0,
                       "optuna_trial_number": None, "metric": "final_accuracy", "value": 0.49},
        "variants": {"krpo": {"counts": _counts({"succeeded": 1, "running": 1}), "n": 1, "mean": 0.49, "ci_low": None, "ci_high": None, "values": [0.49]}},
    })

    spec: dict[str, Any]
    best_trial: BestTrial | None
    variants: dict[str, VariantSummary]

    @classmethod
    def build(cls, info: StudyInfo, jobs: list[JobInfo], results: dict[str, dict[str, Any]]) -> StudyDetail:
        objective = StudySpec.model_validate(info.spec).objective if info.kind != "probe" else Objective()
        metric = "final_" + objective.metric.split("/")[-1]
        sign = 1 if objective.direction == "maximize" else -1
        scored = [
            (job.result[metric], job) for job in jobs
            if job.status == JobStatus.SUCCEEDED and job.result and _finite(job.result.get(metric)) is not None
        ]
        best = None
        if scored:
            value, job = max(scored, key=lambda vj: sign * vj[0])
            best = BestTrial(job_id=job.id, trial_key=job.trial_key, variant=job.config["variant"], seed=job.config["seed"],
                             optuna_trial_number=job.optuna_trial_number, metric=metric, value=value)
        per_variant: dict[str, Counter[str]] = {}
        for job in jobs:
            per_variant.setdefault(job.config["variant"], Counter())[job.status.value] += 1
        no_results = {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "values": []}
        variants = {  # jobs and results are two reads: a search may have queued a trial in between
            name: VariantSummary(counts=_counts(per_variant.get(name, {})), **VariantStats.of(results.get(name, no_results)).model_dump())
            for name in sorted(per_variant.keys() | results.keys())
        }
        return cls(**_summary_fields(info), spec=info.spec, best_trial=best, variants=variants)


class StudyResults(BaseModel):
    """Per variant: statistics of the final held-out accuracy."""

    model_config = _examples({"study_id": _STUDY_ID, "metric": "final_accuracy", "variants": {
        "grpo": {"n": 2, "mean": 0.41, "ci_low": 0.2, "ci_high": 0.62, "values": [0.39, 0.43]},
        "krpo": {"n": 2, "mean": 0.47, "ci_low": 0.34, "ci_high": 0.6, "values": [0.46, 0.48]},
    }})

    study_id: str
    metric: Literal["final_accuracy"] = "final_accuracy"
    variants: dict[str, VariantStats]


_JOB_EXAMPLE = {
    "id": _JOB_ID, "study_id": _STUDY_ID, "trial_key": "krpo|seed=0", "variant": "krpo", "seed": 0,
    "optuna_trial_number": None, "status": "succeeded", "priority": 0, "attempt": 1, "failures": 0,
    "max_attempts": 3, "owner": None, "result": {"final_accuracy": 0.49, "steps": 100}, "last_error": None,
    "mlflow_run_id": "f0e1d2c3b4a5968778695a4b3c2d1e0f", "created_at": _TIME, "started_at": _TIME, "finished_at": _TIME,
}


class JobSummary(BaseModel):
    """One trial's job: state, attempts used, outcome."""

    model_config = _examples(_JOB_EXAMPLE)

    id: str
    study_id: str
    trial_key: str
    variant: str | None
    seed: int | None
    optuna_trial_number: int | None
    status: JobStatus
    priority: int
    attempt: int = Field(description="claims so far (the fence token of the current one)")
    failures: int
    max_attempts: int
    owner: str | None = Field(description="worker holding the job while it runs")
    result: dict[str, Any] | None
    last_error: str | None
    mlflow_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: JobInfo) -> JobSummary:
        return cls(**_job_fields(job))


def _job_fields(job: JobInfo) -> dict[str, Any]:
    names = JobSummary.model_fields.keys() - {"variant", "seed"}
    return {**{n: getattr(job, n) for n in names}, "variant": job.config.get("variant"), "seed": job.config.get("seed")}


class JobPage(BaseModel):
    """One page of a study's jobs in enqueue order."""

    model_config = _examples({"items": [_JOB_EXAMPLE], "total": 4, "limit": 100, "offset": 0, "next_offset": None})

    items: list[JobSummary]
    total: int = Field(description="jobs matching the filter")
    limit: int
    offset: int
    next_offset: int | None


class Attempt(BaseModel):
    """One claim of a job by a worker, with its outcome and error."""

    attempt: int
    worker: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    error: str | None

    @classmethod
    def of(cls, info: AttemptInfo) -> Attempt:
        return cls(attempt=info.attempt, worker=info.worker, started_at=info.started_at, ended_at=info.ended_at,
                   outcome=info.outcome.value if info.outcome else None, error=info.error)


class JobDetail(JobSummary):
    """A job with its full trial config, lease, attempts (errors included) and MLflow run link."""

    model_config = _examples({
        **_JOB_EXAMPLE, "config": {"variant": "krpo", "seed": 0, "trial": {"name": "krpo seed=0"}},
        "lease_expires_at": None, "cancel_requested": False, "timeout_s": None, "gpus": 1,
        "attempts": [{"attempt": 1, "worker": "gpu-box-1234-ab12cd", "started_at": _TIME, "ended_at": _TIME, "outcome": "succeeded", "error": None}],
        "mlflow_run_url": "http://mlflow:5000/#/experiments/3/runs/f0e1d2c3b4a5968778695a4b3c2d1e0f",
    })

    config: dict[str, Any]
    lease_expires_at: datetime | None
    cancel_requested: bool
    timeout_s: float | None
    gpus: int
    attempts: list[Attempt]
    mlflow_run_url: str | None = Field(description="link to the run in the MLflow UI (when the server knows the UI's URL)")

    @classmethod
    def build(cls, job: JobInfo, attempts: list[AttemptInfo], run_url: str | None) -> JobDetail:
        return cls(**_job_fields(job), config=job.config, lease_expires_at=job.lease_expires_at,
                   cancel_requested=job.cancel_requested, timeout_s=job.timeout_s, gpus=job.gpus,
                   attempts=[Attempt.of(a) for a in attempts], mlflow_run_url=run_url)


class WorkerOut(BaseModel):
    """A registered worker: last heartbeat, devices and the jobs it runs."""

    model_config = _examples({
        "id": "gpu-box-1234-ab12cd", "hostname": "gpu-box", "pid": 1234, "gpus": [0], "slots": 1,
        "started_at": _TIME, "heartbeat_at": _TIME, "status": "active", "current_jobs": [_JOB_ID],
    })

    id: str
    hostname: str
    pid: int
    gpus: list[int]
    slots: int
    started_at: datetime
    heartbeat_at: datetime
    status: WorkerStatus
    current_jobs: list[str]

    @classmethod
    def of(cls, info: WorkerInfo) -> WorkerOut:
        return cls(**{n: getattr(info, n) for n in cls.model_fields})


class WorkerList(BaseModel):
    items: list[WorkerOut]


class ExtendRequest(BaseModel):
    """How many trials to add to a search's budget."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"n_trials": 10}]})

    n_trials: int = Field(ge=1, le=MAX_TRIALS_PER_STUDY)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
