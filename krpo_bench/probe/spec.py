"""Pydantic schema of a gradient-quality probe (``kind: probe``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from krpo_bench.advantages.catalog import NEEDS_GREEDY_COMPLETION
from krpo_bench.models.config import ModelSpec
from krpo_bench.spec.base import Strict
from krpo_bench.spec.estimator import EstimatorSpec
from krpo_bench.spec.loading import SpecError, validate
from krpo_bench.spec.names import MAX_NAME_CHARS, DisplayName
from krpo_bench.spec.study import Resources, storage_errors
from krpo_bench.spec.trial import MAX_SEED
from krpo_bench.tasks.config import TaskSpec

MAX_PROBE_ROLLOUTS = 1_000_000
"""Most rollouts one probe may draw: its batches' (batches x prompts_per_batch x the largest group
size) and its reference's (reference.prompts x reference.group_size) together."""
MAX_PROBE_TOKENS = 100_000_000
"""Most completion tokens one probe may generate: its rollouts x max_completion_length."""
MAX_PROBE_ROWS = 128
"""Most table rows (estimators x group sizes): each keeps a parameter-sized gradient sum."""
MAX_REFERENCE_BLOCKS = 8
"""Disjoint blocks of reference rollouts (the k-th reference prompt's rollouts in block k mod K,
K = min(reference prompts, this)) whose leave-one-out references measure the reference's own noise:
each keeps a parameter-sized float64 vector, and each chunk's backward pass is batched over its blocks."""


class ReferenceSpec(Strict):
    """The reference gradient: the same loss with the leave-one-out (rloo) baseline and no std
    scaling, averaged over ``prompts`` x ``group_size`` fresh rollouts. Its prompts also form
    ``MAX_REFERENCE_BLOCKS`` disjoint blocks, whose jackknife puts the reference's own noise into
    every interval of the probe."""

    prompts: int = Field(256, ge=2, le=8192, description="prompts of the reference rollouts")
    group_size: int = Field(16, ge=2, le=256, description="rollouts per reference prompt")
    chunk_prompts: int = Field(32, ge=1, le=4096, description="prompts per forward/backward pass")


class CheckpointRef(Strict):
    """A kept checkpoint of a finished trial, named by what the trial is rather than where it lies:
    the study, the trial's variant, grid point and seed, and the training step. ``krpo-bench probe``
    resolves it through the job database to ``<data home>/trials/<trial id>/checkpoint-<step>``."""

    study: str = Field(
        min_length=1,
        max_length=MAX_NAME_CHARS + 10,  # name~N, N of up to 9 digits
        description="the source study: its id, its name (the newest study of that name) or name~N (the N-th older one)",
    )
    variant: DisplayName = Field(description="the trial's variant (a key of the study's variants)")
    seed: int = Field(ge=0, le=MAX_SEED, description="the trial's seed")
    step: int = Field(ge=1, le=1_000_000, description="the training step of the checkpoint (checkpoint-<step>)")
    grid: dict[str, Any] = Field(
        default_factory=dict,
        max_length=32,
        description="the trial's grid point, {<grid path>: <value>} as in the study's grid; "
        "the paths left out may take any value as long as one trial matches",
    )

    def describe(self) -> str:
        """The trial and step it names, for messages and the report."""
        point = "".join(f" {path}={value}" for path, value in self.grid.items())
        return f"study {self.study!r}, variant {self.variant!r}{point}, seed {self.seed}, step {self.step}"


MAX_CHECKPOINT_PATH = 4096
CheckpointPath = Annotated[str, Field(min_length=1, max_length=MAX_CHECKPOINT_PATH)]


class ProbeResources(Resources):
    """A submitted probe's job: one process (a probe does not split over GPUs), its attempts and time limit.
    A retry re-runs the probe from scratch: given its seed it draws the same rollouts and gives the same numbers."""

    gpus_per_trial: int = Field(1, ge=0, le=1, description="0 or 1: a probe runs in one process")


class ProbeSpec(Strict):
    """A probe: model weights, a task, estimators and group sizes; M batches drawn once and shared."""

    kind: Literal["probe"]
    name: DisplayName
    description: str = Field("", max_length=10_000)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="tiny-arith"))
    checkpoint: CheckpointRef | CheckpointPath | None = Field(
        None,
        description="whose weights replace the model's: a finished trial's kept checkpoint, {study, variant, seed, "
        "step, grid}, or a checkpoint folder (checkpoint-<step>) under the data roots; unset: the warm start",
    )
    task: TaskSpec
    estimators: list[EstimatorSpec] = Field(min_length=1, max_length=50, description="estimator blocks, as in a trial")
    group_sizes: list[Annotated[int, Field(ge=2, le=256)]] = Field(
        min_length=1, max_length=20, description="group sizes G (each 2..256)"
    )
    batches: int = Field(16, ge=2, le=1000, description="one-batch gradients per (estimator, G): M")
    prompts_per_batch: int = Field(8, ge=1, le=4096, description="prompts of one batch (a training step's prompts)")
    reference: ReferenceSpec = Field(default_factory=ReferenceSpec)
    temperature: float = Field(
        1.0, gt=0.0, le=5.0, description="sampling temperature (also divides the logits, as TRL)"
    )
    max_completion_length: int = Field(64, ge=1, le=8192)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "grpo", description="TRL's loss normalisation (bnpo: as with one micro-batch per step)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds prompt choice, sampling and reward noise")
    experiment: DisplayName = Field(
        "krpo-bench-probe",
        description="MLflow experiment of `krpo-bench probe`; a submitted probe logs under its study's experiment",
    )
    resources: ProbeResources = Field(default_factory=ProbeResources, description="the submitted probe's one job")
    priority: int = Field(0, ge=-1000, le=1000, description="queue priority of the submitted probe's job")

    def trial_count(self) -> int:
        """Jobs of a submitted probe: one."""
        return 1

    def rollouts(self) -> int:
        """Rollouts the probe draws: its batches' and its reference's."""
        return (
            self.batches * self.prompts_per_batch * max(self.group_sizes)
            + self.reference.prompts * self.reference.group_size
        )

    @model_validator(mode="after")
    def _bounded_work(self) -> ProbeSpec:
        rows = len(self.estimators) * len(self.group_sizes)
        if rows > MAX_PROBE_ROWS:
            raise ValueError(f"estimators x group_sizes make {rows} table rows; at most {MAX_PROBE_ROWS}")
        rollouts = self.rollouts()
        if rollouts > MAX_PROBE_ROLLOUTS:
            raise ValueError(
                f"the probe would draw {rollouts:,} rollouts (batches x prompts_per_batch x the largest of "
                f"group_sizes + reference.prompts x reference.group_size); at most {MAX_PROBE_ROLLOUTS:,}"
            )
        tokens = rollouts * self.max_completion_length
        if tokens > MAX_PROBE_TOKENS:
            raise ValueError(
                f"the probe would generate up to {tokens:,} completion tokens ({rollouts:,} rollouts x "
                f"max_completion_length {self.max_completion_length}); at most {MAX_PROBE_TOKENS:,}"
            )
        return self

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _checkpoint_form(cls, value: Any) -> Any:
        # A mapping or a path is checked here, so that an error names checkpoint.<field> and not a union member.
        if isinstance(value, dict):
            return CheckpointRef.model_validate(value)
        if isinstance(value, str) and not 1 <= len(value) <= MAX_CHECKPOINT_PATH:
            raise ValueError(f"a checkpoint folder's path has 1 to {MAX_CHECKPOINT_PATH} characters")
        if value is not None and not isinstance(value, (str, CheckpointRef)):
            raise ValueError("give a checkpoint folder's path or a trial's {study, variant, seed, step, grid}")
        return value

    @field_validator("model")
    @classmethod
    def _one_warm_start(cls, model: ModelSpec) -> ModelSpec:
        if model.tiny.warm_starts != 1:
            raise ValueError(
                f"model.tiny.warm_starts is {model.tiny.warm_starts}: a probe starts from one model "
                "(choose it with model.tiny.seed)"
            )
        return model

    @field_validator("group_sizes")
    @classmethod
    def _group_sizes(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"group sizes must be distinct, got {sizes}")
        return sorted(sizes)

    @field_validator("estimators")
    @classmethod
    def _distinct_estimators(cls, estimators: list) -> list:
        names = [e.name for e in estimators]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"each estimator may appear once (a row of the table), repeated: {repeated}")
        greedy = sorted(set(names) & NEEDS_GREEDY_COMPLETION)
        if greedy:
            raise ValueError(f"{', '.join(greedy)} need a greedy completion per prompt, which the probe does not draw")
        return estimators


def validate_probe(data: Any, source: str = "<probe>") -> ProbeSpec:
    """A ProbeSpec from submitted data; every problem (a value the job store cannot hold included)
    raises one SpecError naming its path."""
    unstorable = storage_errors(data) if isinstance(data, dict) else []
    if unstorable:
        raise SpecError(source, unstorable)
    return validate(ProbeSpec, data, source)
