"""Question/answer rows from a Hugging Face dataset: a hub id ``org/name`` or a local ``save_to_disk``
folder under the data roots.

The worker checks the source again (a job may come from any client of the job database): a hub id is
loaded with ``datasets.load_dataset`` only when it is no packaged file builder (``text``, ``json``...,
which would read the worker's working directory) and names no folder here; a local folder is read only
with ``datasets.load_from_disk`` and only under the data roots (``KRPO_BENCH_DATA_ROOTS``), checked where
the folder is opened (:mod:`krpo_bench.data_roots`: a link swapped in after submission is not followed). Errors name
the field and the dataset, never a value read from it; the loader's own error stays in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

from krpo_bench.data_roots import OutsideDataRoots, data_folder
from krpo_bench.settings import get_settings
from krpo_bench.tasks.config import HFTask, dataset_source_problem, is_local_dataset

Row = dict[str, Any]
log = logging.getLogger(__name__)


class DatasetRefused(ValueError):
    """A dataset source this worker will not read."""


def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last ``####``."""
    if "####" not in solution:
        raise ValueError("the answer has no '####' (answer_extract: gsm8k)")
    return solution.rsplit("####", 1)[1].strip()


def _split(saved: datasets.DatasetDict, spec: HFTask, split: str) -> datasets.Dataset:
    if split not in saved:
        raise ValueError(f"task.split: split {split!r} not in {spec.dataset}; it has {sorted(saved)}")
    return saved[split]


def _local(spec: HFTask, roots: tuple[Path, ...]) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    try:
        with data_folder(spec.dataset, "task.dataset", roots) as folder:
            saved = datasets.load_from_disk(str(folder))
    except OutsideDataRoots as err:
        raise DatasetRefused(str(err)) from None
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        log.warning("load_from_disk(%s) failed", spec.dataset, exc_info=True)
        raise DatasetRefused(
            f"task.dataset: {spec.dataset!r} is no folder written by save_to_disk ({type(err).__name__})"
        ) from err
    if isinstance(saved, datasets.Dataset):
        return saved, None
    return _split(saved, spec, spec.split), _split(saved, spec, spec.test_split) if spec.test_split else None


def check_hub_id(source: str) -> None:
    """Refuse a hub id that is malformed, names a packaged builder, or names a folder here
    (``load_dataset`` would read that folder with a packaged builder)."""
    problem = dataset_source_problem(source)
    if problem is None and any(part.lower() in _PACKAGED_DATASETS_MODULES for part in source.split("/")):
        problem = f"{source!r} names one of datasets' packaged file builders, not a dataset"
    if problem is None and os.path.lexists(source):
        problem = f"{source!r} names a path in the worker's working directory, not only a hub dataset"
    if problem:
        raise DatasetRefused(f"task.dataset: {problem}")


def _download(spec: HFTask, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec.dataset, spec.config, split=split)
    except Exception as err:
        log.warning("load_dataset(%r, %r, split=%r) failed", spec.dataset, spec.config, split, exc_info=True)
        raise ValueError(
            f"task.dataset: cannot load {spec.dataset!r} split {split!r} from the hub ({type(err).__name__}; "
            "the worker log has the details)"
        ) from err


def _hub(spec: HFTask) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    check_hub_id(spec.dataset)
    return _download(spec, spec.split), _download(spec, spec.test_split) if spec.test_split else None


def _rows(dataset: datasets.Dataset, spec: HFTask) -> list[Row]:
    for field, name in ((spec.question_field, "question_field"), (spec.answer_field, "answer_field")):
        if field not in dataset.column_names:
            raise ValueError(f"task.{name}: {spec.dataset} has no column {field!r} (columns: {dataset.column_names})")
    extract = gsm8k_final_answer if spec.answer_extract == "gsm8k" else str
    rows = []
    for index, (question, answer) in enumerate(
        zip(dataset[spec.question_field], dataset[spec.answer_field], strict=True)
    ):
        try:
            rows.append({"question": str(question), "answer": extract(str(answer)), "prompt_id": index})
        except ValueError as err:
            raise ValueError(f"task.answer_extract: row {index} of {spec.dataset}: {err}") from None
    return rows


def load(spec: HFTask, roots: tuple[Path, ...] | None = None) -> tuple[list[Row], list[Row] | None]:
    """Rows of ``spec.split`` and ``spec.test_split`` (None when the test split is to be hashed out:
    ``test_split`` unset, or a local folder holding one Dataset rather than a DatasetDict). Local
    folders must lie under ``roots`` (default: the data roots of the settings)."""
    if is_local_dataset(spec.dataset):
        train, test = _local(spec, get_settings().data_roots if roots is None else roots)
    else:
        train, test = _hub(spec)
    return _rows(train, spec), _rows(test, spec) if test is not None else None
