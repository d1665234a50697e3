"""Question/answer rows from a Hugging Face dataset: a local ``save_to_disk`` folder or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from krpo_bench.tasks.config import HFTask

Row = dict[str, Any]


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last ``####``."""
    if "####" not in solution:
        raise ValueError(f"no '####' in GSM8K answer {solution[:80]!r}")
    return solution.rsplit("####", 1)[1].strip()


def _split(saved: datasets.DatasetDict, spec: HFTask, split: str) -> datasets.Dataset:
    if split not in saved:
        raise ValueError(f"split {split!r} not in {spec.dataset}; it has {sorted(saved)}")
    return saved[split]


def _local(spec: HFTask) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    saved = datasets.load_from_disk(str(Path(spec.dataset).expanduser()))
    if isinstance(saved, datasets.Dataset):
        return saved, None
    return _split(saved, spec, spec.split), _split(saved, spec, spec.test_split) if spec.test_split else None


def _download(spec: HFTask, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec.dataset, spec.config, split=split)
    except OSError as err:
        raise ValueError(
            f"cannot load {spec.dataset!r} split {split!r}: it is no local save_to_disk folder and the hub "
            f"answered: {err}"
        ) from err


def _hub(spec: HFTask) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    return _download(spec, spec.split), _download(spec, spec.test_split) if spec.test_split else None


def _rows(dataset: datasets.Dataset, spec: HFTask) -> list[Row]:
    for field in (spec.question_field, spec.answer_field):
        if field not in dataset.column_names:
            raise ValueError(f"{spec.dataset}: no column {field!r} (columns: {dataset.column_names})")
    extract = gsm8k_final_answer if spec.answer_extract == "gsm8k" else str
    return [
        {"question": str(question), "answer": extract(str(answer)), "prompt_id": index}
        for index, (question, answer) in enumerate(
            zip(dataset[spec.question_field], dataset[spec.answer_field], strict=True)
        )
    ]


def load(spec: HFTask) -> tuple[list[Row], list[Row] | None]:
    """Rows of ``spec.split`` and ``spec.test_split`` (None when the test split is to be hashed out:
    ``test_split`` unset, or a local folder holding one Dataset rather than a DatasetDict)."""
    train, test = (_local if Path(spec.dataset).expanduser().is_dir() else _hub)(spec)
    return _rows(train, spec), _rows(test, spec) if test is not None else None
