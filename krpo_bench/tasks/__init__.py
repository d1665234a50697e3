"""Tasks: train/test datasets of prompts with gold answers, plus TRL reward functions.

``build_task(spec)`` turns a validated task spec into a :class:`Task` whose ``train``/``test`` datasets
have the columns ``prompt``, ``question``, ``answer``, ``prompt_id`` and whose ``reward_funcs`` /
``reward_weights`` go straight into TRL's GRPOTrainer / GRPOConfig.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from krpo_bench.tasks import arithmetic, gsm_symbolic, jsonl
from krpo_bench.tasks.config import ArithmeticTask, GSMSymbolicTask, HFTask, JsonlTask, RewardSpec, TaskSpec
from krpo_bench.tasks.prompts import Completion, extract_answer, render_prompt
from krpo_bench.tasks.rewards import RewardFunc, combine_rewards, is_correct, reward_function
from krpo_bench.tasks.split import in_test_split

if TYPE_CHECKING:
    import datasets  # imported where datasets are built: validating a spec does not need it

Row = dict[str, Any]

# A generator gives up after this many draws in a row that added no new question to an unfilled split.
MAX_FRUITLESS_DRAWS = 50_000

TINY_ARITH_TASK = ArithmeticTask(
    kind="arithmetic",
    num_terms=(2, 2),
    num_digits=(1, 2),
    operators=["+"],
    parentheses=False,
    unary_minus=False,
    templates=["{expr}="],
    compact=True,
    rewards=[RewardSpec(name="exact")],
)


@dataclass
class Task:
    """Datasets and reward functions of one task, ready for TRL."""

    spec: ArithmeticTask | GSMSymbolicTask | JsonlTask | HFTask
    train: datasets.Dataset
    test: datasets.Dataset
    reward_funcs: list[RewardFunc]
    reward_weights: list[float]
    prompt_style: str
    math_verify_fallback: bool
    answer_extraction: str = "auto"

    def is_correct(self, completion: Completion, answer: str) -> bool:
        """Held-out correctness of one completion against its gold answer."""
        return is_correct(completion, answer, self.prompt_style, self.math_verify_fallback, self.answer_extraction)


def _fill_splits(
    stream: Iterator[tuple[str, str]], train_size: int, test_size: int, kind: str
) -> tuple[list[Row], list[Row]]:
    """Draw (question, answer) pairs until both splits are full, deduplicating questions and sending
    each to the split ``in_test_split`` assigns it."""
    splits: dict[bool, list[Row]] = {False: [], True: []}
    sizes = {False: train_size, True: test_size}
    seen: set[str] = set()
    fruitless = 0
    while len(splits[False]) < train_size or len(splits[True]) < test_size:
        question, answer = next(stream)
        held_out = in_test_split(question)
        rows = splits[held_out]
        if question in seen or len(rows) == sizes[held_out]:
            fruitless += 1
            if fruitless > MAX_FRUITLESS_DRAWS:
                raise ValueError(
                    f"{kind} task: the question space is too small for train_size={train_size} and "
                    f"test_size={test_size}: only {len(splits[False])} train and {len(splits[True])} test "
                    f"distinct questions after {MAX_FRUITLESS_DRAWS} draws in a row found nothing new"
                )
            continue
        fruitless = 0
        seen.add(question)
        rows.append({"question": question, "answer": answer, "prompt_id": len(rows)})
    return splits[False], splits[True]


def _split_by_hash(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    held_out = [in_test_split(r["question"]) for r in rows]
    return [r for r, h in zip(rows, held_out) if not h], [r for r, h in zip(rows, held_out) if h]


def _cap(rows: list[Row], size: int, seed: str) -> list[Row]:
    """At most ``size`` rows: a seeded subset, kept in source order."""
    if len(rows) <= size:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), size))]


def _file_splits(train: list[Row], test: list[Row] | None, spec: JsonlTask | HFTask) -> tuple[list[Row], list[Row]]:
    """Hash-split when there is no test source, drop train rows whose question is held out, cap sizes."""
    if test is None:
        train, test = _split_by_hash(train)
    held_out = {r["question"] for r in test}
    train = [r for r in train if r["question"] not in held_out]
    return _cap(train, spec.train_size, f"{spec.seed}-train"), _cap(test, spec.test_size, f"{spec.seed}-test")


def _dataset(rows: list[Row], style: str, name: str) -> datasets.Dataset:
    if not rows:
        raise ValueError(f"the {name} split is empty")
    ids = [r["prompt_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the {name} split has duplicate prompt ids")
    import datasets

    return datasets.Dataset.from_dict(
        {
            "prompt": [render_prompt(r["question"], style) for r in rows],
            "question": [r["question"] for r in rows],
            "answer": [r["answer"] for r in rows],
            "prompt_id": ids,
        }
    )


def build_task(spec: TaskSpec | Mapping[str, Any]) -> Task:
    """Build the datasets and reward functions of ``spec`` (a task model or its dict form).

    Generated tasks (arithmetic, gsm_symbolic) have exactly train_size/test_size questions; file tasks
    (jsonl, hf) at most that many. Train and test never share a question. Same spec, same datasets.
    """
    if isinstance(spec, Mapping):
        spec = TypeAdapter(TaskSpec).validate_python(spec)
    if isinstance(spec, ArithmeticTask | GSMSymbolicTask):
        source = arithmetic if isinstance(spec, ArithmeticTask) else gsm_symbolic
        train, test = _fill_splits(source.generate(spec), spec.train_size, spec.test_size, spec.kind)
    else:
        from krpo_bench.tasks import hf

        train, test = _file_splits(*(jsonl if isinstance(spec, JsonlTask) else hf).load(spec), spec)
    style = spec.prompt_style
    return Task(
        spec=spec,
        train=_dataset(train, style, "train"),
        test=_dataset(test, style, "test"),
        reward_funcs=[reward_function(r.name, style, spec.answer_extraction) for r in spec.rewards],
        reward_weights=[r.weight for r in spec.rewards],
        prompt_style=style,
        math_verify_fallback=not isinstance(spec, ArithmeticTask),
        answer_extraction=spec.answer_extraction,
    )


__all__ = [
    "TINY_ARITH_TASK",
    "ArithmeticTask",
    "GSMSymbolicTask",
    "HFTask",
    "JsonlTask",
    "RewardSpec",
    "Task",
    "TaskSpec",
    "build_task",
    "combine_rewards",
    "extract_answer",
    "is_correct",
]
