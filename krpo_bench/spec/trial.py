"""Pydantic schema of one trial: model + task + estimator + training configuration."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from krpo_bench.models.config import ModelSpec
from krpo_bench.spec.base import Strict
from krpo_bench.spec.estimator import EstimatorSpec
from krpo_bench.spec.identity import identity_hash
from krpo_bench.spec.names import DisplayName
from krpo_bench.tasks.config import TaskSpec

MAX_SEED = 2**31 - 1


class TrainingSpec(Strict):
    """Optimisation and rollout settings of one trial (names follow TRL's GRPOConfig)."""

    group_size: int = Field(8, ge=2, le=256, description="completions per prompt (G)")
    prompts_per_step: int = Field(8, ge=1, le=4096, description="prompt groups per optimizer step")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="micro-batches per optimizer step (must divide prompts_per_step x group_size)"
    )
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    beta: float = Field(0.0, ge=0.0, le=10.0, description="k3 KL weight against the reference model")
    epsilon: float = Field(0.2, gt=0.0, le=10.0, description="PPO clip range")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    num_iterations: int = Field(1, ge=1, le=16, description="policy updates per generation batch (mu)")
    max_completion_length: int = Field(64, ge=1, le=32768)
    max_steps: int = Field(100, ge=1, le=100_000)
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    eval_every: int = Field(
        0, ge=0, le=1_000_000, description="steps between held-out evaluations (0: at the end only)"
    )
    eval_size: int | None = Field(None, ge=1, le=100_000, description="test prompts per evaluation (default: all)")
    pass_at_k: int = Field(4, ge=1, le=64, description="k of the sampled pass@k evaluation")
    eval_batch_size: int = Field(64, ge=1, le=4096)
    checkpoint_every: int = Field(50, ge=1, le=1_000_000)
    gradient_checkpointing: bool = Field(False, description="trade compute for memory (large models)")

    def micro_batch_size(self, processes: int = 1) -> int:
        """Rollouts one process takes per micro-batch: prompts_per_step x group_size split over
        gradient_accumulation_steps x ``processes`` (a multi-process trial keeps the same batch)."""
        rollouts = self.prompts_per_step * self.group_size
        split = self.gradient_accumulation_steps * processes
        if rollouts % split:
            over = f"gradient_accumulation_steps ({self.gradient_accumulation_steps})"
            if processes > 1:
                over += f" x {processes} processes"
            raise ValueError(f"{over} must divide prompts_per_step x group_size ({rollouts})")
        return rollouts // split

    @model_validator(mode="after")
    def _micro_batches_divide(self) -> TrainingSpec:
        self.micro_batch_size()
        return self


class TrialSpec(Strict):
    """Everything one trial needs; the YAML of ``krpo-bench trial`` validates against this."""

    name: DisplayName = "trial"
    trial_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="names the run folder; running the same id again resumes it (default: a hash of the config)",
    )
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(name="tiny-arith"))
    task: TaskSpec
    estimator: EstimatorSpec = Field(default_factory=lambda: {"name": "grpo"}, validate_default=True)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    experiment: DisplayName = Field("krpo-bench", description="MLflow experiment")

    def resolved_id(self) -> str:
        """``trial_id``, or a hash of everything that changes the result; a release that adds a field
        with a default leaves it unchanged (see :mod:`krpo_bench.spec.identity`)."""
        if self.trial_id:
            return self.trial_id
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)[:40].strip("_.-") or "trial"
        return f"{slug}-{identity_hash(self, exclude={'trial_id', 'name', 'experiment'})[:12]}"
