"""Question/answer rows read from JSON-lines files, opened only under the data roots (checked again
here, where the file is opened: see :mod:`krpo_bench.data_roots`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from krpo_bench.data_roots import data_file
from krpo_bench.tasks.config import JsonlTask

Row = dict[str, Any]


def prompt_id_of(value: Any) -> int:
    """An int prompt id from a record's id: integers as they are, other values by a stable 63-bit hash."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if text.lstrip("-").isdigit():
        return int(text)
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") >> 1


def read_rows(path: str, spec: JsonlTask, field: str = "task.path", roots: Sequence[Path] | None = None) -> list[Row]:
    """The rows of one file (the spec's ``field``) as {question, answer, prompt_id}; prompt_id is the
    id field or the line number. The file must lie under ``roots`` (default: the data roots)."""
    try:
        with data_file(path, field, roots) as lines:
            return _rows(lines, Path(path).expanduser(), spec)
    except FileNotFoundError:
        raise FileNotFoundError(f"{field}: JSONL file not found: {Path(path).expanduser()}") from None


def _rows(lines: Iterable[str], file: Path, spec: JsonlTask) -> list[Row]:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{file}:{number}: expected a JSON object, got {type(record).__name__}")
        for name in (spec.question_field, spec.answer_field, spec.id_field):
            if name is not None and name not in record:
                raise ValueError(f"{file}:{number}: missing field {name!r} (has {sorted(record)})")
        rows.append(
            {
                "question": str(record[spec.question_field]),
                "answer": str(record[spec.answer_field]),
                "prompt_id": prompt_id_of(record[spec.id_field]) if spec.id_field else number,
            }
        )
    return rows


def load(spec: JsonlTask) -> tuple[list[Row], list[Row] | None]:
    """Rows of ``spec.path`` and of ``spec.test_path`` (None when the test split is to be hashed out)."""
    return read_rows(spec.path, spec), read_rows(spec.test_path, spec, "task.test_path") if spec.test_path else None
