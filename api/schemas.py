"""Pydantic models of the API's requests and responses (with OpenAPI examples)."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from krpo_bench.analysis.model import ComparisonResult, Estimate, StudyAnalysis, VariantResult, finite_or_none
from krpo_bench.analysis.replication import Replication
from krpo_bench.service.db import JobStatus, StudyStatus, WorkerStatus
from krpo_bench.service.kinds import handler
from krpo_bench.service.studies import StudyInfo, StudyView
from krpo_bench.service.study_state import WAITING_FOR_WORKER, display_state
from krpo_bench.spec.names import MAX_NAME_CHARS
from krpo_bench.spec.study import MAX_TRIALS_PER_STUDY, Objective

if TYPE_CHECKING:
    from krpo_bench.service.queue import AttemptInfo, JobInfo
    from krpo_bench.service.worker_registry import WorkerInfo

_TIME = "2026-01-01T12:00:00Z"
_STUDY_ID = "0b8c2f6e-5b1a-4a52-9d0e-3f3f9a1c2d4e"
_JOB_ID = "7d1e9c52-8f0b-4b8e-a4a6-1c2b3d4e5f60"


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

    model_config = _examples(
        {
            "error": "invalid_spec",
            "message": "the study spec is invalid",
            "request_id": "5f0c8d2a9b7e4c1d",
            "errors": [
                {
                    "path": "base.training.max_steps",
                    "value": 0,
                    "message": "Input should be greater than or equal to 1",
                    "type": "greater_than_equal",
                }
            ],
        }
    )

    error: str
    message: str
    request_id: str
    errors: list[ErrorDetail] = Field(default_factory=list)


_SUMMARY_EXAMPLE = {
    "id": _STUDY_ID,
    "name": "krpo-vs-grpo",
    "kind": "ablation",
    "status": "running",
    "state": "running",
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
    state: str = Field(
        description="the status as shown to people: while a running study has queued trials and none "
        f"running, `queued` (a worker is live) or `{WAITING_FOR_WORKER}` (none is: start `krpo-bench worker`); "
        "else the status"
    )
    priority: int
    total: int = Field(description="trials the study holds (a search: its budget x seeds per trial)")
    done: int = Field(description="trials in a final state")
    counts: dict[str, int] = Field(description="jobs per status")
    created_at: datetime
    optuna_study_name: str | None
    mlflow_experiment_id: str | None
    mlflow_parent_run_id: str | None

    @classmethod
    def of(cls, info: StudyInfo, workers: int) -> StudySummary:
        """The summary of ``info``; ``workers``: the live workers (for ``state``)."""
        return cls(**_summary_fields(info, workers))


def _summary_fields(info: StudyInfo, workers: int) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "kind": info.kind,
        "status": info.status,
        "state": display_state(info.status, info.counts, workers),
        "priority": info.priority,
        "total": info.total,
        "done": info.done,
        "counts": _counts(info.counts),
        "created_at": info.created_at,
        "optuna_study_name": info.optuna_study_name,
        "mlflow_experiment_id": info.mlflow_experiment_id,
        "mlflow_parent_run_id": info.mlflow_parent_run_id,
    }


class StudyPage(BaseModel):
    """One page of studies, newest first; ``next_offset`` is null on the last page."""

    model_config = _examples({"items": [_SUMMARY_EXAMPLE], "limit": 50, "offset": 0, "next_offset": None})

    items: list[StudySummary]
    limit: int
    offset: int
    next_offset: int | None


_VARIANT_EXAMPLE = {
    "variant": "krpo",
    "grid_point": [],
    "label": "krpo",
    "n": 3,
    "seeds": [0, 1, 2],
    "values": [0.75, 0.77, 0.775],
    "mean": {"estimate": 0.765, "low": 0.731, "high": 0.799},
    "iqm": {"estimate": 0.765, "low": 0.75, "high": 0.775},
    "initial_mean": 0.48,
}


class VariantDetail(VariantResult):
    """A variant group's job counts beside its results (its statistics are `VariantResult`'s)."""

    model_config = _examples({**_VARIANT_EXAMPLE, "counts": _counts({"succeeded": 3})})

    counts: dict[str, int]

    @classmethod
    def of(cls, result: VariantResult, counts: dict[str, int]) -> VariantDetail:
        """``result`` with the job counts of its group."""
        return cls(**dict(result), counts=_counts(counts))


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
    """A study with its spec, best trial, per-variant counts and results, and its comparisons."""

    model_config = _examples(
        {
            **_SUMMARY_EXAMPLE,
            "spec": {"name": "krpo-vs-grpo", "kind": "ablation", "seeds": 2, "base": {"task": {"kind": "arithmetic"}}},
            "best_trial": {
                "job_id": _JOB_ID,
                "trial_key": "krpo|seed=0",
                "variant": "krpo",
                "seed": 0,
                "optuna_trial_number": None,
                "metric": "final_accuracy",
                "value": 0.49,
            },
            "variants": {"krpo": {**_VARIANT_EXAMPLE, "counts": _counts({"succeeded": 3})}},
            "comparisons": [],
        }
    )

    spec: dict[str, Any]
    best_trial: BestTrial | None
    variants: dict[str, VariantDetail]
    comparisons: list[ComparisonResult]

    @classmethod
    def build(cls, view: StudyView) -> StudyDetail:
        """The detail of the study ``view`` saw."""
        info, jobs, analysis = view.info, view.jobs, view.analysis
        objective = view.spec.objective if handler(info.kind).analysed else Objective()
        metric = "final_" + objective.metric.split("/")[-1]
        sign = 1 if objective.direction == "maximize" else -1
        scored = [
            (job.result[metric], job)
            for job in jobs
            if job.status == JobStatus.SUCCEEDED and job.result and finite_or_none(job.result.get(metric)) is not None
        ]
        best = None
        if scored:
            value, job = max(scored, key=lambda vj: sign * vj[0])
            best = BestTrial(
                job_id=job.id,
                trial_key=job.trial_key,
                variant=job.config["variant"],
                seed=job.config["seed"],
                optuna_trial_number=job.optuna_trial_number,
                metric=metric,
                value=value,
            )
        per_variant: dict[str, Counter[str]] = {}
        for job in jobs:
            per_variant.setdefault(job.config["variant"], Counter())[job.status.value] += 1
        # a label the analysis grouped under another one's (same variant and grid point) shows no results
        results = {r.label: r for r in analysis.variants} | {
            label: VariantResult(
                variant=label,
                label=label,
                n=0,
                seeds=[],
                values=[],
                mean=_UNDEFINED,
                iqm=_UNDEFINED,
                initial_mean=math.nan,
            )
            for label in per_variant.keys() - {r.label for r in analysis.variants}
        }
        variants = {label: VariantDetail.of(results[label], per_variant.get(label, {})) for label in sorted(results)}
        return cls(
            **_summary_fields(info, view.workers),
            spec=info.spec,
            best_trial=best,
            variants=variants,
            comparisons=analysis.comparisons,
        )


_UNDEFINED = Estimate(estimate=math.nan, low=math.nan, high=math.nan)


class StudyResults(StudyAnalysis):
    """The study's analysis (`krpo_bench.analysis.StudyAnalysis`): per variant and grid point the final
    held-out accuracy by seed, its mean and IQM with 95 % intervals (null where undefined), and each
    variant against the reference at its grid point: paired by seed when both ran the same seeds
    (paired t-interval, bootstrap interval, paired t-test, exact Wilcoxon signed-rank, share of seeds
    won), else unpaired (Welch, Wilcoxon rank-sum, P(X > Y)); ``welch_*`` is the unpaired analysis
    either way; ``mde`` the smallest true difference these seeds detect with 80 % power, and
    ``seeds_needed`` the seeds that would detect ``target_effect``."""

    model_config = _examples(
        {
            "study_id": _STUDY_ID,
            "metric": "final/accuracy",
            "reference": "grpo",
            "confidence": 0.95,
            "power": 0.8,
            "target_effect": 0.02,
            "n_bootstrap": 2000,
            "bootstrap_seed": 0,
            "reference_found": True,
            "variants": [
                {
                    **_VARIANT_EXAMPLE,
                    "variant": "grpo",
                    "label": "grpo",
                    "values": [0.76, 0.775, 0.785],
                    "mean": {"estimate": 0.773, "low": 0.742, "high": 0.805},
                },
                _VARIANT_EXAMPLE,
            ],
            "comparisons": [
                {
                    "variant": "krpo",
                    "grid_point": [],
                    "label": "krpo",
                    "reference": "grpo",
                    "reference_grid_point": [],
                    "reference_label": "grpo",
                    "metric": "final/accuracy",
                    "analysis": "paired",
                    "n_variant": 3,
                    "n_reference": 3,
                    "difference": {"estimate": -0.008, "low": -0.044, "high": 0.028},
                    "difference_bootstrap": {"estimate": -0.008, "low": -0.025, "high": 0.0},
                    "prob_improvement": {"estimate": 0.33, "low": 0.0, "high": 0.5},
                    "p_value": 0.42,
                    "rank_p_value": 1.0,
                    "welch_difference": {"estimate": -0.008, "low": -0.034, "high": 0.017},
                    "welch_p": 0.6,
                    "mde": 0.047,
                    "target_effect": 0.02,
                    "seeds_needed": 7,
                    "confidence": 0.95,
                    "sentence": "no detectable difference between krpo and grpo (paired by seed, 3 seeds: -0.8 points, ...)",
                }
            ],
            "order_checks": [],
        }
    )

    study_id: str

    @classmethod
    def of(cls, study_id: str, analysis: StudyAnalysis) -> StudyResults:
        """The analysis of study ``study_id`` as the API returns it."""
        return cls(study_id=study_id, **dict(analysis))


_JOB_EXAMPLE = {
    "id": _JOB_ID,
    "study_id": _STUDY_ID,
    "trial_key": "krpo|seed=0",
    "variant": "krpo",
    "seed": 0,
    "optuna_trial_number": None,
    "status": "succeeded",
    "priority": 0,
    "attempt": 1,
    "failures": 0,
    "max_attempts": 3,
    "owner": None,
    "result": {"final_accuracy": 0.49, "steps": 100},
    "last_error": None,
    "mlflow_run_id": "f0e1d2c3b4a5968778695a4b3c2d1e0f",
    "created_at": _TIME,
    "started_at": _TIME,
    "finished_at": _TIME,
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
        return cls(
            attempt=info.attempt,
            worker=info.worker,
            started_at=info.started_at,
            ended_at=info.ended_at,
            outcome=info.outcome.value if info.outcome else None,
            error=info.error,
        )


class JobDetail(JobSummary):
    """A job with its full trial config, lease, attempts (errors included) and MLflow run link."""

    model_config = _examples(
        {
            **_JOB_EXAMPLE,
            "config": {"variant": "krpo", "seed": 0, "trial": {"name": "krpo seed=0"}},
            "lease_expires_at": None,
            "cancel_requested": False,
            "timeout_s": None,
            "gpus": 1,
            "attempts": [
                {
                    "attempt": 1,
                    "worker": "gpu-box-1234-ab12cd",
                    "started_at": _TIME,
                    "ended_at": _TIME,
                    "outcome": "succeeded",
                    "error": None,
                }
            ],
            "mlflow_run_url": "http://mlflow:5000/#/experiments/3/runs/f0e1d2c3b4a5968778695a4b3c2d1e0f",
        }
    )

    config: dict[str, Any]
    lease_expires_at: datetime | None
    cancel_requested: bool
    timeout_s: float | None
    gpus: int
    attempts: list[Attempt]
    mlflow_run_url: str | None = Field(
        description="link to the run in the MLflow UI (when the server knows the UI's URL)"
    )

    @classmethod
    def build(cls, job: JobInfo, attempts: list[AttemptInfo], run_url: str | None) -> JobDetail:
        return cls(
            **_job_fields(job),
            config=job.config,
            lease_expires_at=job.lease_expires_at,
            cancel_requested=job.cancel_requested,
            timeout_s=job.timeout_s,
            gpus=job.gpus,
            attempts=[Attempt.of(a) for a in attempts],
            mlflow_run_url=run_url,
        )


class WorkerOut(BaseModel):
    """A registered worker: last heartbeat, devices and the jobs it runs."""

    model_config = _examples(
        {
            "id": "gpu-box-1234-ab12cd",
            "hostname": "gpu-box",
            "pid": 1234,
            "gpus": [0],
            "slots": 1,
            "started_at": _TIME,
            "heartbeat_at": _TIME,
            "status": "active",
            "current_jobs": [_JOB_ID],
        }
    )

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


class ConfirmRequest(BaseModel):
    """Which variants of an ablation to confirm on fresh seeds, and on how many."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"variants": ["krpo"], "seeds": 5}]})

    variants: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="variants to re-run (default: all); the reference variant always runs",
    )
    seeds: int | None = Field(
        None, ge=2, le=1000, description="fresh seeds (default: as many as the study's first look)"
    )


class ReplicationResults(Replication):
    """A confirmation's analysis (`krpo_bench.analysis.replication.Replication`): the confirmation alone (the
    pre-declared test), its original alone, the two pooled over the arms the confirmation ran (seeds of both), and
    per comparison the heterogeneity between the two studies' differences: each with its seed-level standard error
    (the studies share the test items, so item noise cancels from their difference), Cochran's Q with 1 df, its
    p-value and I², and the small-sample p (t with Welch-Satterthwaite df)."""


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
