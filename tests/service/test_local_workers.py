"""Which workers `krpo-bench run` starts on this machine for one- and multi-GPU studies (the GPU
count is set by the test: this only checks the command lines, nothing runs on a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from krpo_bench.service import local
from krpo_bench.service.local import NotEnoughGPUs, local_worker_commands

SERVICE = SimpleNamespace(db_url="sqlite:///jobs.db", mlflow_uri="sqlite:///mlflow.db")


def gpus_of(commands: list[tuple[list[str], dict[str, str]]]) -> list[str]:
    return [cmd[cmd.index("--gpus") + 1] for cmd, _ in commands]


def test_multi_gpu_trials_get_one_worker_over_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert gpus_of(local_worker_commands(SERVICE, 0)) == ["0", "1", "2", "3"]
    assert gpus_of(local_worker_commands(SERVICE, 0, gpus_per_trial=2)) == ["0,1,2,3"]
    with pytest.raises(NotEnoughGPUs, match="resources.gpus_per_trial is 8, but this machine has 4 GPU"):
        local_worker_commands(SERVICE, 0, gpus_per_trial=8)


def test_on_cpu_multi_gpu_trials_run_as_cpu_processes_sharing_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: set(range(4)))
    assert gpus_of(local_worker_commands(SERVICE, 0)) == ["cpu", "cpu"]
    commands = local_worker_commands(SERVICE, 0, gpus_per_trial=4)
    assert gpus_of(commands) == ["cpu"] and commands[0][1]["KRPO_BENCH_CPU_THREADS"] == "4"


def test_the_cpu_threads_setting_is_what_local_cpu_workers_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two studies run side by side on one machine can keep their trials from oversubscribing the
    cores: the setting wins over the cores shared out."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: set(range(4)))
    assert [env["KRPO_BENCH_CPU_THREADS"] for _, env in local_worker_commands(SERVICE, 1)] == ["4"]
    monkeypatch.setenv("KRPO_BENCH_CPU_THREADS", "1")
    commands = local_worker_commands(SERVICE, 1)
    assert [(env["KRPO_BENCH_CPU_THREADS"], env["OMP_NUM_THREADS"]) for _, env in commands] == [("1", "1")]


def test_progress_in_a_log_is_one_line_per_change_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with nohup, `krpo-bench run` writes whole progress lines to its log (rich's live display
    writes nothing there until the end, and then without a newline)."""
    import io

    from rich.console import Console

    clock = [0.0]
    monkeypatch.setattr(local.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    show = local._progress_log(Console(file=out, width=60), started=0.0, every_s=30)

    def info(done: int, status: str = "running") -> SimpleNamespace:
        return SimpleNamespace(
            name="s", total=4, done=done, status=status, counts={"succeeded": done, "running": 4 - done, "queued": 0}
        )

    for t, state in [
        (0, info(0)),
        (10, info(1)),
        (31, info(1)),
        (40, info(2)),
        (61, info(3)),
        (62, info(4, "succeeded")),
    ]:
        clock[0] = t
        show(state)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split("done")[0].strip() for line in lines] == ["0/4", "1/4", "3/4", "4/4"]
    assert out.getvalue().endswith("\n") and all(line.startswith("s: ") for line in lines)
