"""What a parsed spec file is: a trial, or a study of which kind (for layers below the service)."""

from __future__ import annotations

from typing import Any


def kind_of(data: Any) -> str | None:
    """The study kind a parsed spec declares (its ``kind``; a study with a ``base`` but no ``kind``
    gives ``""``, which the study model rejects by name), or None for a trial (neither key)."""
    if not isinstance(data, dict) or not ("kind" in data or "base" in data):
        return None
    return str(data.get("kind", ""))
