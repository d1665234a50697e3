"""Question/answer rows read from JSON-lines files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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


def read_rows(path: str, spec: JsonlTask) -> list[Row]:
    """The rows of one file as {question, answer, prompt_id}; prompt_id is the id field or the line number."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"JSONL file not found: {file}")
    rows = []
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{file}:{number}: expected a JSON object, got {type(record).__name__}")
            for field in (spec.question_field, spec.answer_field, spec.id_field):
                if field is not None and field not in record:
                    raise ValueError(f"{file}:{number}: missing field {field!r} (has {sorted(record)})")
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
    return read_rows(spec.path, spec), read_rows(spec.test_path, spec) if spec.test_path else None
