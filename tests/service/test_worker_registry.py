"""The worker registry on SQLite and PostgreSQL: register, heartbeat, deregister, list."""

from __future__ import annotations

from sqlalchemy import Engine

from krpo_bench.service.db import WorkerStatus
from krpo_bench.service.transactions import Transactions
from krpo_bench.service.worker_registry import WorkerRegistry


def test_workers_register_beat_and_stop(engine: Engine) -> None:
    registry = WorkerRegistry(Transactions(engine))
    registry.register("gpu-0", hostname="node1", pid=42, gpus=[0], slots=1)
    registry.register("cpu", hostname="node1", pid=43)
    first_beat = registry.list()[1].heartbeat_at
    assert registry.heartbeat("gpu-0", ["job-a"])
    assert not registry.heartbeat("unknown", [])
    registry.deregister("cpu")
    cpu, gpu = registry.list()
    assert (gpu.id, gpu.gpus, gpu.current_jobs) == ("gpu-0", [0], ["job-a"])
    assert gpu.status is WorkerStatus.ACTIVE
    assert gpu.heartbeat_at >= first_beat
    assert (cpu.status, cpu.gpus, cpu.pid) == (WorkerStatus.STOPPED, [], 43)
    registry.register("cpu", hostname="node2", pid=44)
    assert registry.list()[0].status is WorkerStatus.ACTIVE
