"""Test-wide settings: offline hubs, a throw-away data home per pytest-xdist worker; in CI
(``CI=true``) a skipped test fails the run unless tests/allowed_skips.py lists it with its reason; a
PostgreSQL test must close every connection it opens."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterator

import pytest

from tests.allowed_skips import ALLOWED_SKIPS, unlisted

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if "PYTEST_XDIST_WORKER" in os.environ:
    # one torch (OpenMP) thread per xdist worker, and in the processes its tests start: two workers'
    # two threads each on two cores stall for seconds whenever another process takes a core
    os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests.db"]


_unlisted_skips: list[tuple[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    """The data home, unless ``KRPO_BENCH_HOME`` is set: ``.pytest-home/<xdist worker>`` (``main``
    without xdist), so that a worker's default SQLite job database and MLflow store are its own. Not
    set in the xdist controller, whose environment its workers inherit."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker or not config.getoption("numprocesses", None):
        os.environ.setdefault("KRPO_BENCH_HOME", os.path.join(os.getcwd(), ".pytest-home", worker or "main"))


def _uses_postgres(request: pytest.FixtureRequest) -> bool:
    callspec = getattr(request.node, "callspec", None)
    return "pg_url" in request.fixturenames or (callspec is not None and callspec.params.get("db_url") == "postgresql")


@pytest.fixture(autouse=True)
def _no_postgres_connection_left_open(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a PostgreSQL test, nothing it opened is left for the garbage collector: psycopg warns
    when it collects an open connection, and the warning lands in whichever later test runs then
    (one that turns warnings into errors fails for it): dispose every engine, a service's too.
    What earlier tests left for the collector is collected before a PostgreSQL test starts, so a
    failure names the test that leaked."""
    if not _uses_postgres(request):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and "psycopg" in str(w.message)]
    if leaked:
        pytest.fail(f"{len(leaked)} PostgreSQL connection(s) left open by this test, e.g. {leaked[0]}", pytrace=False)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and unlisted(report.nodeid):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _unlisted_skips.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _unlisted_skips and _in_ci():
        terminalreporter.section("skips not listed in tests/allowed_skips.py (CI=true fails the run)", red=True)
        for nodeid, reason in _unlisted_skips:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(f"{len(ALLOWED_SKIPS)} skip(s) allowed")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unlisted_skips and _in_ci() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
