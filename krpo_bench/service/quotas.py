"""Tenancy: who owns a study, and how much queued work one owner (a submit token) may hold.

A study's owner is the id of the API token that submitted it. An owner's usage is what its running
studies hold in the queue: queued and running trials, and their trial-seconds (each trial's
timeout). A new study, an extension or a resume is admitted when its planned trials fit beside that
usage under both quotas; checks and submissions of one owner are serialised in this process, so
concurrent requests of one token cannot both slip under a quota.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from krpo_bench.probe.spec import ProbeSpec
from krpo_bench.service.study_rows import StudyRows
from krpo_bench.spec.study import StudySpec


@dataclass(frozen=True)
class Quotas:
    """Per-owner limits (the server settings of the same names) and the timeout a trial without
    one is given."""

    max_active_trials_per_token: int
    max_trial_hours_per_token: int
    default_timeout_s: int


@dataclass(frozen=True)
class Usage:
    """Queued and running trials of one owner's running studies, and their timeouts summed."""

    trials: int
    trial_seconds: float


class QuotaExceeded(Exception):
    """A request that would take an owner past a quota; the message names the setting."""


def with_default_timeout(study: StudySpec | ProbeSpec, seconds: int) -> StudySpec | ProbeSpec:
    """``study`` with ``resources.timeout_s`` set to ``seconds`` when it sets none."""
    if study.resources.timeout_s is not None:
        return study
    return study.model_copy(update={"resources": study.resources.model_copy(update={"timeout_s": seconds})})


def quota_error(usage: Usage, trials: int, trial_seconds: float, quotas: Quotas) -> str | None:
    """Why adding ``trials`` trials of ``trial_seconds`` in all to ``usage`` is refused, or None."""
    held = f"this token's running studies hold {usage.trials:,} queued or running trials"
    if usage.trials + trials > quotas.max_active_trials_per_token:
        return (
            f"{held}; {trials:,} more would exceed the {quotas.max_active_trials_per_token:,} this server allows per "
            "token (KRPO_BENCH_MAX_ACTIVE_TRIALS_PER_TOKEN): wait for some to finish or cancel a study"
        )
    hours, more = usage.trial_seconds / 3600, trial_seconds / 3600
    if hours + more > quotas.max_trial_hours_per_token:
        return (
            f"{held} worth {hours:,.0f} trial-hours (trials x timeout); {trials:,} more worth {more:,.0f} would exceed "
            f"the {quotas.max_trial_hours_per_token:,} trial-hours this server allows per token "
            "(KRPO_BENCH_MAX_TRIAL_HOURS_PER_TOKEN): set a shorter resources.timeout_s or wait"
        )
    return None


def owner_of(rows: StudyRows, study_id: str) -> str | None:
    """The owner of a study (None: submitted without a token)."""
    return rows.owner(study_id)


class QuotaGuard:
    """Admits an owner's new work under its quotas, one request of that owner at a time."""

    def __init__(self, rows: StudyRows, quotas: Quotas) -> None:
        self.quotas = quotas
        self._rows = rows
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def admit(
        self, owner: str | None, trials: int, timeout_s: float | None, idempotency_key: str | None = None
    ) -> Iterator[None]:
        """Hold the owner's turn while the caller stores ``trials`` new trials of ``timeout_s``
        each (None: the default timeout); raises QuotaExceeded first when they do not fit. An
        owner of None (no token) has no quota, and neither has the repeat of a submission
        (``idempotency_key`` names a stored study: the caller gets that study back)."""
        if owner is None or (idempotency_key is not None and self._rows.by_idempotency_key(idempotency_key)):
            yield
            return
        with self._guard:
            lock = self._locks.setdefault(owner, threading.Lock())
        with lock:
            usage = Usage(*self._rows.owner_usage(owner, self.quotas.default_timeout_s))
            seconds = trials * (timeout_s or self.quotas.default_timeout_s)
            refused = quota_error(usage, trials, seconds, self.quotas)
            if refused:
                raise QuotaExceeded(refused)
            yield
