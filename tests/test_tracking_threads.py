"""The tracker's one-try HTTP settings hold for every thread inside a tracker call, whatever the
order threads enter and leave in, and the process environment is restored once all have left."""

from __future__ import annotations

import os
import threading

import pytest

from krpo_bench.tracking import REQUEST_TIMEOUT_S, _one_http_try

MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
THREADS = 8


def _settings() -> tuple[str | None, str | None]:
    return os.environ.get(MAX_RETRIES), os.environ.get(TIMEOUT)


@pytest.mark.parametrize("user_settings", [{}, {MAX_RETRIES: "7", TIMEOUT: "600"}, {TIMEOUT: "5"}])
def test_overlapping_calls_keep_the_settings_until_the_last_one_leaves(monkeypatch, user_settings):
    for key in (MAX_RETRIES, TIMEOUT):
        monkeypatch.delenv(key, raising=False)
    for key, value in user_settings.items():
        monkeypatch.setenv(key, value)
    before = _settings()
    expected_inside = ("0", "5" if user_settings.get(TIMEOUT) == "5" else str(REQUEST_TIMEOUT_S))
    inside = [threading.Event() for _ in range(THREADS)]
    leave = [threading.Event() for _ in range(THREADS)]
    seen: list[list[tuple[str | None, str | None]]] = [[] for _ in range(THREADS)]

    def call(i: int) -> None:
        with _one_http_try():
            seen[i].append(_settings())
            inside[i].set()
            leave[i].wait(timeout=10)
            seen[i].append(_settings())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(THREADS)]
    for i, thread in enumerate(threads):  # one after the other: thread 0 enters first
        thread.start()
        assert inside[i].wait(timeout=10)
    for i, thread in enumerate(threads):  # the first to enter leaves first, the others still inside
        assert _settings() == expected_inside, f"{THREADS - i} threads still inside a call"
        leave[i].set()
        thread.join(timeout=10)
    assert all(s == [expected_inside, expected_inside] for s in seen)
    assert _settings() == before
