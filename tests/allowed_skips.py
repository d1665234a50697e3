"""The one list of tests that may be skipped in CI, each with its reason (``CI=true``: any other
skip fails the run). Keys are pytest node ids; a key ending in ``[`` covers every parameter of the
test. The list is empty: every test runs on the CI machine (``.ci/run`` installs PostgreSQL's
client tools, chromium and every extra)."""

from __future__ import annotations

ALLOWED_SKIPS: dict[str, str] = {}


def unlisted(nodeid: str) -> bool:
    """True when a skip of ``nodeid`` is not allowed by :data:`ALLOWED_SKIPS`."""
    return not any(nodeid == key or (key.endswith("[") and nodeid.startswith(key)) for key in ALLOWED_SKIPS)
