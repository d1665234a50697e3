"""Pydantic schema of a task: where its questions come from, how prompts look, how answers are scored."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from krpo_bench.tasks.noise import RewardNoise

RewardName = Literal["paper", "paper_lenient", "exact", "math_verify", "format"]
PromptStyle = Literal["plain", "chat_r1", "chat"]
AnswerExtraction = Literal["auto", "answer_tag", "first_line", "last_number"]

MATHTASKS_TEMPLATES = ["Solve {expr}", "What is {expr}?", "{expr} =", "{expr} = ?", "{expr}"]

TermCount = Annotated[int, Field(ge=2, le=6, description="terms in one expression (2..6)")]
DigitCount = Annotated[int, Field(ge=1, le=6, description="digits of one number (1..6)")]


class RewardSpec(BaseModel):
    """One reward function and its weight in the trainer's weighted sum."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: RewardName
    weight: float = Field(1.0, gt=0, le=100, description="weight in the weighted sum (0 < weight <= 100)")


class TaskBase(BaseModel):
    """Fields every task has: prompt rendering, rewards, split sizes and the generation seed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt_style: PromptStyle = "plain"
    answer_extraction: AnswerExtraction = Field(
        "auto",
        description="how exact/math_verify rewards and evaluation read the answer: auto (answer_tag for "
        "chat_r1, first_line for plain, last_number for chat), answer_tag, first_line, last_number",
    )
    reward_noise: RewardNoise | None = Field(None, description="seeded noise on training rewards only")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="paper")],
        min_length=1,
        description="reward functions (at least one)",
    )
    train_size: int = Field(
        2000, ge=1, le=1_000_000, description="training prompts (exact for generated tasks, a cap for files)"
    )
    test_size: int = Field(
        200, ge=1, le=100_000, description="held-out prompts (exact for generated tasks, a cap for files)"
    )
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seed of the generator (or of the subset drawn from a larger file)"
    )

    @field_validator("rewards")
    @classmethod
    def _unique_reward_names(cls, rewards: list[RewardSpec]) -> list[RewardSpec]:
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"each reward may appear once, got {names}")
        return rewards

    @model_validator(mode="after")
    def _flip_needs_unit_rewards(self) -> TaskBase:
        total = sum(r.weight for r in self.rewards)
        if self.reward_noise is not None and self.reward_noise.flip > 0 and total > 1:
            raise ValueError(
                f"reward_noise.flip ({self.reward_noise.flip}) needs rewards in [0, 1]: the reward weights "
                f"must sum to at most 1, got {total}"
            )
        return self


class ArithmeticTask(TaskBase):
    """MathTasks-style arithmetic: num_terms numbers of num_digits digits joined by + - *, with
    optional parentheses and unary minus, phrased by one of the templates."""

    kind: Literal["arithmetic"]
    num_terms: tuple[TermCount, TermCount] = Field((2, 5), strict=False)  # a YAML/JSON list is fine
    num_digits: tuple[DigitCount, DigitCount] = Field((1, 5), strict=False)
    operators: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+", "-", "*"], min_length=1)
    parentheses: bool = True
    unary_minus: bool = True
    templates: list[str] = Field(default_factory=lambda: list(MATHTASKS_TEMPLATES), min_length=1)
    compact: bool = Field(False, description='no spaces in the expression, e.g. "12+7"')

    @field_validator("num_terms", "num_digits")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError(f"range must be (low, high) with low <= high, got {value}")
        return value

    @field_validator("operators")
    @classmethod
    def _unique_operators(cls, operators: list[str]) -> list[str]:
        if len(set(operators)) != len(operators):
            raise ValueError(f"operators must be unique, got {operators}")
        return operators

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: list[str]) -> list[str]:
        missing = [t for t in templates if "{expr}" not in t]
        if missing:
            raise ValueError(f"every template must contain '{{expr}}'; these do not: {missing}")
        return templates


class GSMSymbolicTask(TaskBase):
    """GSM8K-style word problems from reasoning-gym's offline ``gsm_symbolic`` generator."""

    kind: Literal["gsm_symbolic"]
    prompt_style: PromptStyle = "chat_r1"
    difficulty: float = Field(
        1.0, ge=1.0, le=1.0, description="reasoning-gym's difficulty scale (it supports only 1.0 so far)"
    )


class JsonlTask(TaskBase):
    """Question/answer pairs from JSON-lines files."""

    kind: Literal["jsonl"]
    path: str = Field(min_length=1, description="training file (also the test source without test_path)")
    test_path: str | None = Field(None, description="held-out file; unset: a hash split of `path`")
    question_field: str = "question"
    answer_field: str = "answer"
    id_field: str | None = Field(None, description="field holding a stable prompt id; unset: the line number")

    @model_validator(mode="after")
    def _distinct_files(self) -> JsonlTask:
        if self.test_path == self.path:
            raise ValueError(f"test_path must differ from path ({self.path!r}); unset it for a hash split")
        return self


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
PACKAGED_BUILDERS = frozenset(
    {
        "arrow",
        "audiofolder",
        "cache",
        "conll",
        "csv",
        "eval",
        "fasta",
        "fastq",
        "folder_based_builder",
        "genbank",
        "generator",
        "harbor",
        "hdf5",
        "iceberg",
        "imagefolder",
        "json",
        "lance",
        "meshfolder",
        "mmcif",
        "niftifolder",
        "pandas",
        "parquet",
        "pdb",
        "pdffolder",
        "spark",
        "sql",
        "text",
        "tsfile",
        "videofolder",
        "vortex",
        "webdataset",
        "xml",
    }
)
"""``datasets``' packaged builders: ``load_dataset("text")`` reads the files of the working directory,
so none of them may name a dataset (tests check this list covers the installed ``datasets``)."""


def is_local_dataset(source: str) -> bool:
    """Whether a dataset source names a local ``save_to_disk`` folder (absolute, or under ``~``)."""
    return source.startswith(("/", "~"))


def dataset_source_problem(source: str) -> str | None:
    """Why ``source`` is neither a hub id ``org/name`` nor an absolute folder path, or None."""
    if "\x00" in source:
        return "must not contain NUL characters"
    if is_local_dataset(source):
        return None
    parts = source.split("/")
    if not HUB_ID.match(source) or ".." in source:
        return "expected a hub id 'org/name' or an absolute path to a save_to_disk folder under the data roots"
    if any(part.lower() in PACKAGED_BUILDERS for part in parts):
        return f"{source!r} names one of datasets' packaged file builders ({', '.join(sorted(PACKAGED_BUILDERS))}), not a dataset"
    return None


Label = Annotated[str, Field(min_length=1, max_length=200)]


class HFTask(TaskBase):
    """A Hugging Face dataset: a hub id ``org/name``, or an absolute path to a ``save_to_disk`` folder
    (which a server accepts only under its data roots)."""

    kind: Literal["hf"]
    dataset: str = Field(
        min_length=1, max_length=4096, description="hub id 'org/name' or absolute path to a save_to_disk folder"
    )
    config: Label | None = Field(None, description="hub configuration name (e.g. 'main' for gsm8k)")
    split: Label = "train"
    test_split: Label | None = Field("test", description="held-out split; unset: a hash split of `split`")
    question_field: Label = "question"
    answer_field: Label = "answer"
    answer_extract: Literal["none", "gsm8k"] = Field(
        "none", description="gsm8k: the gold answer is the text after '####'"
    )

    @field_validator("dataset")
    @classmethod
    def _hub_id_or_folder(cls, source: str) -> str:
        problem = dataset_source_problem(source)
        if problem:
            raise ValueError(problem)
        return source

    @model_validator(mode="after")
    def _distinct_splits(self) -> HFTask:
        if self.test_split == self.split:
            raise ValueError(f"test_split must differ from split ({self.split!r}); unset it for a hash split")
        return self


TaskSpec = Annotated[Union[ArithmeticTask, GSMSymbolicTask, JsonlTask, HFTask], Field(discriminator="kind")]
