"""How a worker fills its GPUs (no GPU needed: the budgets are given and trial processes are not
started, only recorded): jobs are packed by their memory estimate without oversubscribing any GPU,
a multi-GPU job gets distinct GPUs, pinned, through the accelerate launcher; fixed slots ignore
memory. The real multi-process launch is tested on CPU in test_multi_process.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from krpo_bench.service import worker as worker_module
from krpo_bench.service.launch import trial_command
from krpo_bench.service.studies import StudyService
from krpo_bench.service.worker import Worker
from tests.db import add_study

BUDGET_MIB = 10_000


class RecordedProcess:
    """Stands in for a trial's process: records how it would have been started, never exits."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args, self.env = args, env

    def poll(self) -> None:
        return None


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StudyService:
    monkeypatch.setattr(worker_module, "gpu_budget_mib", lambda device: BUDGET_MIB)
    monkeypatch.setattr(
        worker_module,
        "SpawnedTrial",
        lambda job_file, env, log_file, processes: RecordedProcess(trial_command(job_file, processes), env),
    )
    monkeypatch.setattr(
        worker_module, "ForkedTrial", lambda job_file, env, log_file: RecordedProcess(trial_command(job_file, 1), env)
    )
    return StudyService(f"sqlite:///{tmp_path / 'jobs.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")


def placements(worker: Worker) -> dict[str, tuple[str, list[str]]]:
    """trial key -> (CUDA_VISIBLE_DEVICES, command after the interpreter) of every started job."""
    return {
        r.job.trial_key: (r.process.env["CUDA_VISIBLE_DEVICES"], r.process.args[1:-1]) for r in worker.running.values()
    }


def reserved(worker: Worker) -> dict[str, int]:
    return {d: sum(r.memory_mib for r in worker.running.values() if d in r.devices) for d in worker.devices}


def test_auto_slots_pack_by_memory_and_pin_a_multi_gpu_job_to_distinct_gpus(service: StudyService) -> None:
    study_id = add_study(service.engine)
    service.queue.enqueue(study_id, "pair", {}, gpus=2, gpu_memory_mib=6000, priority=3)
    service.queue.enqueue(study_id, "too-big-now", {}, gpus=1, gpu_memory_mib=5000, priority=2)
    for key in ("x", "y", "z"):
        service.queue.enqueue(study_id, key, {}, gpus=1, gpu_memory_mib=3000, priority=1)
    worker = Worker(service, devices=["0", "1"])
    assert worker._fill_slots() == 3
    assert placements(worker) == {
        "pair": ("0,1", ["-m", "krpo_bench.service.launch", "2"]),
        "x": ("0", ["-m", "krpo_bench.service.child"]),
        "y": ("1", ["-m", "krpo_bench.service.child"]),
    }
    assert reserved(worker) == {"0": 9000, "1": 9000}, "no GPU holds more than its budget"
    assert [j.trial_key for j in service.jobs(study_id) if j.status == "queued"] == ["too-big-now", "z"]


def test_an_idle_gpu_takes_a_job_estimated_above_its_budget(service: StudyService) -> None:
    study_id = add_study(service.engine)
    service.queue.enqueue(study_id, "huge", {}, gpus=1, gpu_memory_mib=4 * BUDGET_MIB)
    service.queue.enqueue(study_id, "small", {}, gpus=1, gpu_memory_mib=100)
    worker = Worker(service, devices=["0"])
    assert worker._fill_slots() == 1
    assert list(placements(worker)) == ["huge"], "it runs alone rather than waiting forever"


def test_fixed_slots_ignore_memory_estimates(service: StudyService) -> None:
    study_id = add_study(service.engine)
    for key in ("a", "b", "c"):
        service.queue.enqueue(study_id, key, {}, gpus=1, gpu_memory_mib=BUDGET_MIB)
    worker = Worker(service, devices=["0"], slots_per_device=2)
    assert worker._fill_slots() == 2
    assert worker.budgets == {}
