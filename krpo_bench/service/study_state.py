"""What a study is doing, in words for people: a display state derived from its stored status, its
job counts and the live workers. The stored statuses stay the job protocol's (a study with queued
trials is ``running``); only what is shown says ``queued`` or ``waiting for a worker``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from krpo_bench.service.db import JobStatus, StudyStatus, utcnow
from krpo_bench.service.worker_registry import WorkerRegistry

WORKER_SILENCE_S = 60.0
"""A worker whose last heartbeat is older than this (a worker's default lease) is not counted as
live: it was killed without deregistering."""
WAITING_FOR_WORKER = "waiting for a worker"
START_A_WORKER = (
    "no worker is running: start one with 'krpo-bench worker' (or serve with 'krpo-bench serve --workers N')"
)


class HasWorkers(Protocol):
    """What :func:`live_workers_of` reads: a study service's worker registry."""

    registry: WorkerRegistry


def live_since(now: datetime) -> datetime:
    """The oldest heartbeat of a worker counted as live at ``now``."""
    return now - timedelta(seconds=WORKER_SILENCE_S)


def live_workers_of(service: HasWorkers) -> int:
    """How many workers of ``service``'s job database are live now (one count of the worker table)."""
    return service.registry.live(live_since(utcnow()))


def display_state(status: str, counts: Mapping[str, int], workers: int) -> str:
    """The study's state as shown: its stored ``status``, except a running study none of whose
    trials runs: ``queued`` while a worker is live (it will claim them), else ``waiting for a worker``."""
    if status != StudyStatus.RUNNING.value or counts.get(JobStatus.RUNNING.value, 0):
        return status
    if counts.get(JobStatus.QUEUED.value, 0):
        return JobStatus.QUEUED.value if workers else WAITING_FOR_WORKER
    return status
