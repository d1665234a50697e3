"""Deterministic train/test assignment of a question, shared by every generated task."""

from __future__ import annotations

import hashlib

TEST_FRACTION_PERCENT = 20


def in_test_split(question: str) -> bool:
    """True for the ~20 % of question texts that belong to the held-out split (hash of the text)."""
    digest = hashlib.sha1(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < TEST_FRACTION_PERCENT
