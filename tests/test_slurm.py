"""SLURM worker arrays: the script ``krpo-bench slurm`` writes (its text, and its signal handling run
under bash), how workers honour an allocation (GPUs, CPU threads, their ids), and a real
single-node cluster (tests/slurm_cluster.py) running a study on the suite's PostgreSQL through
``scancel`` and a time limit, ending with the accuracies of the same study run by local workers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from krpo_bench.service.launch import visible_devices
from krpo_bench.service.local import run_study_locally
from krpo_bench.service.studies import StudyService
from krpo_bench.service.worker import (
    allocated_gpus,
    available_cpus,
    cpu_threads_per_trial,
    default_worker_id,
    detect_devices,
)
from krpo_bench.settings import data_home
from krpo_bench.slurm import (
    SlurmError,
    SlurmOptions,
    exported_settings,
    time_limit_s,
    worker_script,
)
from krpo_bench.spec.study import validate_study
from tests.db import create_pg_database, drop_pg_database
from tests.slurm_cluster import SWEEP_S, SlurmCluster, slurm_cluster  # noqa: F401 (a fixture)
from tests.test_cli_imports import HEAVY, WRAPPER
from tests.trial_specs import tiny_trial

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "KRPO_BENCH_HOME": "/shared/krpo",
    "KRPO_BENCH_DB": "postgresql://krpo@db:5432/krpo",
    "MLFLOW_TRACKING_URI": "http://ml:5000",
}


def directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


# -- the script -----------------------------------------------------------------------------------


def test_the_script_asks_for_the_array_and_hands_signals_to_the_worker():
    options = SlurmOptions(
        workers=4,
        time="2-00:00:00",
        grace_s=240,
        gpus_per_worker=2,
        cpus_per_worker=16,
        partition="gpu",
        account="proj-7",
        qos="normal",
        python="/venv/bin/python",
    )
    script = worker_script(options, ENV)
    assert script.startswith("#!/bin/bash\n")
    assert directives(script) == [
        "--job-name=krpo-bench",
        "--array=0-3",
        "--ntasks=1",
        "--cpus-per-task=16",
        "--gres=gpu:2",
        "--time=2-00:00:00",
        "--partition=gpu",
        "--account=proj-7",
        "--qos=normal",
        "--signal=B:TERM@240",
        "--requeue",
        "--open-mode=append",
        "--output=krpo-bench-%A_%a.out",
    ]
    for name, value in ENV.items():
        assert f"export {name}={value}\n" in script
    assert "/venv/bin/python -m krpo_bench.cli worker --gpus auto --slots-per-gpu 1 --exit-when-idle &\n" in script
    assert "trap 'kill -TERM \"$worker\" 2>/dev/null' TERM" in script


def test_a_cpu_array_asks_for_no_gpu_and_names_only_what_was_given():
    script = worker_script(
        SlurmOptions(workers=1, time="30", grace_s=60, cpus_per_worker=2), {"KRPO_BENCH_DB": "postgresql://h/d b"}
    )
    assert directives(script) == [
        "--job-name=krpo-bench",
        "--array=0-0",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--time=30",
        "--signal=B:TERM@60",
        "--requeue",
        "--open-mode=append",
        "--output=krpo-bench-%A_%a.out",
    ]
    assert "export KRPO_BENCH_DB='postgresql://h/d b'\n" in script, "values are shell-quoted"
    assert "worker --gpus cpu " in script


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 60),
        ("90", 5400),
        ("5:30", 330),
        ("1:00:00", 3600),
        ("2-0", 172800),
        ("1-2:03", 93780),
        ("1-02:03:04", 93784),
    ],
)
def test_slurm_time_limits(text: str, seconds: int):
    assert time_limit_s(text) == seconds


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (SlurmOptions(time="0:30"), "--time"),
        (SlurmOptions(time="one hour"), "--time"),
        (SlurmOptions(time="1", grace_s=60), "--grace"),
        (SlurmOptions(grace_s=0), "--grace"),
        (SlurmOptions(workers=0), "--workers"),
        (SlurmOptions(workers=1001), "--workers"),
        (SlurmOptions(gpus_per_worker=-1), "--gpus-per-worker"),
        (SlurmOptions(cpus_per_worker=0), "--cpus-per-worker"),
        (SlurmOptions(slots_per_gpu="two"), "--slots-per-gpu"),
        (SlurmOptions(partition="gpu; rm -rf ~"), "--partition"),
        (SlurmOptions(account="a\nb"), "--account"),
        (SlurmOptions(output="log'%A"), "--output"),
    ],
)
def test_options_slurm_would_refuse_are_errors_naming_the_option(options: SlurmOptions, names: str):
    with pytest.raises(SlurmError, match=names):
        worker_script(options, ENV)


def test_the_exported_settings_are_the_settings_and_never_a_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in ("KRPO_BENCH_CONFIG", "KRPO_BENCH_DB", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KRPO_BENCH_HOME", str(tmp_path))
    assert exported_settings("postgresql://krpo@db/krpo") == {
        "KRPO_BENCH_HOME": str(tmp_path),
        "KRPO_BENCH_DB": "postgresql://krpo@db/krpo",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    with pytest.raises(SlurmError, match="KRPO_BENCH_DB holds a password"):
        exported_settings("postgresql://krpo:secret@db/krpo")
    config = tmp_path / "krpo.toml"
    config.write_text('db = "postgresql://krpo:secret@db/krpo"\n')
    monkeypatch.setenv("KRPO_BENCH_CONFIG", str(config))
    assert exported_settings() == {
        "KRPO_BENCH_CONFIG": str(config),
        "KRPO_BENCH_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }, "a setting from the config file is read there by the workers, not copied into the script"


FAKE_PYTHON = """#!/bin/bash
# stands in for 'python -m krpo_bench.cli config|worker ...': the worker hands back on SIGTERM, slowly
[ "$3" = config ] && exit 0
echo "worker $*" >> "$EVENTS"
trap 'echo "worker got TERM" >> "$EVENTS"; sleep 1; echo "worker handed back" >> "$EVENTS"; exit 0' TERM
while true; do sleep 0.1; done
"""


def test_the_script_forwards_sigterm_and_waits_for_the_worker_to_hand_back(tmp_path: Path):
    """What SLURM's ``--signal=B:TERM`` does to the batch shell: the worker gets the signal at once
    (not after a foreground command) and the shell ends only when the worker has, with its status."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "workers.sbatch"
    script.write_text(worker_script(SlurmOptions(python=str(python)), ENV))
    events = tmp_path / "events"
    shell = subprocess.Popen(["bash", str(script)], env=dict(os.environ, EVENTS=str(events)))
    deadline = time.monotonic() + 10
    while not (events.exists() and "worker" in events.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    shell.send_signal(signal.SIGTERM)
    assert shell.wait(timeout=10) == 0
    assert events.read_text().splitlines() == [
        "worker -m krpo_bench.cli worker --gpus cpu --slots-per-gpu 1 --exit-when-idle",
        "worker got TERM",
        "worker handed back",
    ]


def test_slurm_dry_run_prints_the_script_without_the_training_stack(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRPO_BENCH_", "MLFLOW_"))}
    env.update(KRPO_BENCH_HOME=str(tmp_path), KRPO_BENCH_DB="postgresql://krpo@db/krpo")
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, "slurm", "--dry-run", "--workers", "3", "--time", "4:00:00"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    script, loaded = done.stdout.rsplit("LOADED=", 1)
    assert "#SBATCH --array=0-2\n" in script and "export KRPO_BENCH_DB=postgresql://krpo@db/krpo\n" in script
    assert not set(HEAVY) & set(json.loads(loaded)), f"krpo-bench slurm --dry-run imported {loaded}"


# -- workers honour the allocation ----------------------------------------------------------------


def test_a_worker_uses_only_the_gpus_of_its_allocation():
    assert allocated_gpus({}) is None, "outside a scheduler nothing is restricted"
    assert allocated_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert allocated_gpus({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "4,5"}) == ["4", "5"]
    assert allocated_gpus({"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "0,1"}) == ["0", "1"]
    assert allocated_gpus({"SLURM_JOB_ID": "7"}) == [], "a SLURM job given no GPU has none, whatever the node has"
    # a trial on the worker's ordinals 0 and 1 runs on the GPUs the worker was given, not the node's first two
    assert visible_devices(["0", "1"], "2,3") == "2,3"
    assert visible_devices(["1"], "GPU-aa,GPU-bb") == "GPU-bb"
    assert visible_devices(["0", "1"], None) == "0,1"
    with pytest.raises(ValueError, match="GPU.s. 2 not among the 2"):
        visible_devices(["2"], "4,5")


def test_a_gpu_list_outside_the_allocation_is_refused_at_start(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
    assert detect_devices("1") == ["1"]
    with pytest.raises(ValueError, match="GPU.s. 2 not among the 2 this worker may use"):
        detect_devices("0,2")


def test_gpus_auto_in_a_slurm_job_without_gpus_is_a_cpu_worker(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # so that the value the worker sets is undone after the test
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    assert detect_devices("auto") == ["cpu"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "", "its trials see no GPU either"


def test_cpu_threads_follow_the_allocation(monkeypatch: pytest.MonkeyPatch):
    assert available_cpus({"SLURM_CPUS_PER_TASK": "6"}) == 6
    assert available_cpus({}) == len(os.sched_getaffinity(0))
    monkeypatch.delenv("KRPO_BENCH_CPU_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert cpu_threads_per_trial(2) == 3
    monkeypatch.setenv("KRPO_BENCH_CPU_THREADS", "5")
    assert cpu_threads_per_trial(2) == 5, "the setting still wins"


def test_a_worker_in_slurm_is_named_by_its_job_and_array_task():
    array = {"SLURM_JOB_ID": "108", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "8"}
    assert default_worker_id(array, "gpu07", 4242) == "slurm-100_8-gpu07-4242"
    assert default_worker_id({"SLURM_JOB_ID": "55"}, "gpu07", 4242) == "slurm-55-gpu07-4242"
    assert default_worker_id({}, "gpu07", 4242).startswith("gpu07-4242-")


# -- a real cluster -------------------------------------------------------------------------------

STEPS = 96
CHECKPOINT_EVERY = 4
TRIALS = 5  # enough that a trial is still queued when the time-limited task starts, on a fast machine too
MARGIN_S = 3.0  # slack on each side of slurmctld's sweeps (its loop wakes about once a second)
STARTING_S = 1.5  # from running 'krpo-bench slurm' to the task's start


def study() -> dict[str, Any]:
    base = {
        k: v for k, v in tiny_trial(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, pass_at_k=1).items() if k != "name"
    }
    base["task"]["test_size"] = 16
    base["task"]["train_size"] = 32  # 4 steps an epoch: a hand-back past a checkpoint resumes in a later epoch
    return {
        "name": "slurm-array",
        "kind": "ablation",
        "base": base,
        "seeds": TRIALS,
        "variants": {"grpo": {"estimator": {"name": "grpo"}}},
    }


def signal_plan(signal_at_s: float) -> tuple[int, int, float, float]:
    """``(minutes, grace_s, offset_s, at_s)``: a task with ``--time minutes --grace grace_s`` started
    ``offset_s`` seconds after a time-limit sweep gets its early SIGTERM ``at_s`` seconds in, as near
    ``signal_at_s`` as can be (the shortest time limit, then the shortest grace, of the nearest).
    The signal is due once at most ``grace_s + SWEEP_S`` seconds are left and is sent at the first
    sweep after that; offsets within ``MARGIN_S`` of a sweep boundary are avoided."""
    plans = []
    for minutes in (1, 2, 3):
        for grace in range(10, 60 * minutes - 20, 10):
            for offset in (MARGIN_S + 0.5 * i for i in range(int(2 * (SWEEP_S - 2 * MARGIN_S)) + 1)):
                due = offset + 60 * minutes - grace - SWEEP_S  # seconds after the sweep before the task
                if due > 0 and not MARGIN_S <= due % SWEEP_S <= SWEEP_S - MARGIN_S:
                    continue
                at = SWEEP_S * max(1, -(-due // SWEEP_S)) - offset
                plans.append((abs(at - signal_at_s), minutes, grace, offset, at))
    _, minutes, grace, offset, at = min(plans)
    return minutes, grace, offset, at


def newest_checkpoint(trial_id: str) -> int | None:
    steps = [int(p.name.split("-")[-1]) for p in (data_home() / "trials" / trial_id).glob("checkpoint-*")]
    return max(steps, default=None)


class EventLog:
    """Polls a study's jobs: which worker started, stopped and resumed each trial, from which step."""

    def __init__(self, service: StudyService, study_id: str) -> None:
        self.service, self.study_id = service, study_id
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.holders: dict[str, tuple[int, str] | None] = {}
        self.handed_back: dict[tuple[str, int], int | None] = {}  # (job, attempt) -> its newest checkpoint then
        self.resumed: dict[tuple[str, int], int | None] = {}  # (job, attempt) -> the checkpoint it started from
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def note(self, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.started:6.1f} s  {text}")
        print(self.lines[-1], flush=True)

    def _watch(self) -> None:
        while not self.done.is_set():
            self.poll()
            time.sleep(0.2)

    def poll(self) -> None:
        starts = []
        for job in self.service.jobs(self.study_id):
            trial = job.config["trial"]["trial_id"]
            holder = (job.attempt, job.owner) if job.status == "running" else None
            before = self.holders.get(job.id)
            if holder == before:
                continue
            if before is not None:
                step = job.result["steps"] if job.status == "succeeded" else newest_checkpoint(trial)
                if job.status != "succeeded":
                    self.handed_back[(job.id, before[0])] = step
                self.note(f"{job.trial_key}: attempt {before[0]} on {before[1]} ended {job.status} at step {step}")
            if holder is not None:
                self.resumed[(job.id, holder[0])] = newest_checkpoint(trial)
                starts.append((job, holder))
            self.holders[job.id] = holder
        for job, (attempt, owner) in starts:  # after the ends seen in the same poll
            start = self.resumed[(job.id, attempt)]
            self.note(
                f"{job.trial_key}: attempt {attempt} started on {owner} "
                + (f"resuming from checkpoint {start}" if start else "from step 0")
            )

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.poll()


def wait_until(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def slurm_cli(cluster: SlurmCluster, service: StudyService, tmp_path: Path, *args: str) -> tuple[str, str]:
    """``krpo-bench slurm`` submitting a CPU array on the test cluster; returns the array's job id
    and what the command said on stderr."""
    command = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "slurm",
        "--db",
        service.db_url,
        "--mlflow",
        service.mlflow_uri,
        "--cpus-per-worker",
        "1",
        "--output",
        str(tmp_path / "slurm-%A_%a.out"),
        *args,
    ]
    done = subprocess.run(command, env=cluster.env(), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/bin/bash") and "--signal=B:TERM@" in done.stdout, "it prints the script"
    return done.stderr.split("submitted worker array ")[1].split()[0], done.stderr


def held_by(service: StudyService, study_id: str, task: str, *, checkpointed: bool = False) -> Any:
    """A running job of the SLURM array task ``task`` (``<job>_<index>``), with a checkpoint if asked."""
    for job in service.jobs(study_id):
        mine = job.status == "running" and (job.owner or "").startswith(f"slurm-{task}-")
        if mine and (not checkpointed or newest_checkpoint(job.config["trial"]["trial_id"])):
            return job
    return None


def seconds(stamp: Any) -> float:
    return stamp.replace(tzinfo=stamp.tzinfo or UTC).timestamp()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_array_survives_scancel_and_a_time_limit(slurm_cluster: SlurmCluster, tmp_path: Path):  # noqa: F811
    began = time.time()
    local = StudyService(f"sqlite:///{tmp_path / 'local.db'}", f"sqlite:///{tmp_path / 'local-mlflow.db'}")
    reference = run_study_locally(local, validate_study(study(), "study"), workers=2)
    assert reference.status == "succeeded"
    local_jobs = local.jobs(reference.id)
    expected = {job.trial_key: job.result["final_accuracy"] for job in local_jobs}
    trial_s = min(seconds(job.finished_at) - seconds(job.started_at) for job in local_jobs)  # this machine's pace
    local_s = time.time() - began

    url = create_pg_database()
    service = StudyService(url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        (tmp_path / "study.yaml").write_text(json.dumps(study()))  # JSON is YAML
        array, submitted = slurm_cli(
            slurm_cluster,
            service,
            tmp_path,
            str(tmp_path / "study.yaml"),
            "--workers",
            "2",
            "--time",
            "10",
            "--grace",
            "10",
        )
        info = service.get(submitted.split("submitted study ")[1].split()[0])
        log = EventLog(service, info.id)
        try:
            log.note(f"array {array}: 2 tasks, --time 10, submitted with the study")
            # (a) scancel a task while its trial trains, past a checkpoint
            victim = wait_until(
                lambda: held_by(service, info.id, f"{array}_0", checkpointed=True),
                300,
                f"task {array}_0 to train a trial past a checkpoint",
            )
            subprocess.run(["scancel", f"{array}_0"], env=slurm_cluster.env(), check=True)
            log.note(f"scancel {array}_0 while it trains {victim.trial_key}")
            warm_up = (
                seconds(victim.started_at)
                - datetime.fromisoformat(slurm_cluster.job_state(f"{array}_0")["StartTime"]).timestamp()
            )
            # (b) a task with a short time limit, started so that its early SIGTERM comes mid-trial:
            # once started, the worker claims a trial within about its warm-up, and trials last trial_s
            minutes, grace, offset, signal_at = signal_plan(warm_up + trial_s / 2)
            sweeps = slurm_cluster.sweeps()
            sweep = (
                sweeps[-1] if sweeps and time.time() < sweeps[-1] + offset - STARTING_S else slurm_cluster.after_sweep()
            )
            time.sleep(max(0.0, sweep + offset - time.time() - STARTING_S))
            limited, _ = slurm_cli(
                slurm_cluster, service, tmp_path, "--workers", "1", "--time", str(minutes), "--grace", str(grace)
            )
            log.note(
                f"array {limited}: 1 task, --time {minutes} --grace {grace}, submitted to start {offset:.0f} s after a "
                f"time-limit sweep: its SIGTERM is due {signal_at:.0f} s in (warm-up {warm_up:.0f} s, trial {trial_s:.0f} s)"
            )
            wait_until(lambda: not slurm_cluster.squeue(limited), 300, f"task {limited}_0 to end")
            ended = slurm_cluster.job_state(f"{limited}_0")
            log.note(
                f"task {limited}_0 ended {ended['JobState']} after {ended['RunTime']} (started {ended['StartTime']})"
            )
            # an idle worker (--exit-when-idle) stays while a trial runs elsewhere, so the array's
            # other task takes up every hand-back, then ends with nothing left
            wait_until(
                lambda: service.get(info.id).status == "succeeded" or not slurm_cluster.squeue(array),
                600,
                "the study to succeed or its workers to end",
            )
            assert service.get(info.id).status == "succeeded", "the array's workers ended before the study"
            log.note("study succeeded")
            wait_until(lambda: not slurm_cluster.squeue(array), 60, "the idle workers to end their tasks")
            log.note("every task ended: the idle workers exited")
        finally:
            log.stop()
        limited_state = slurm_cluster.job_state(f"{limited}_0")
        jobs = service.jobs(info.id)
        trails = {job.id: service.queue.list_attempts(job.id) for job in jobs}
        # every trial ended once: one succeeded attempt, the last
        for job in jobs:
            outcomes = [a.outcome for a in trails[job.id]]
            assert job.status == "succeeded" and outcomes.count("succeeded") == 1 and outcomes[-1] == "succeeded", (
                outcomes
            )
        # the scancelled task and the time-limited one each handed a trial back, and the attempt after
        # each hand-back resumed from the newest checkpoint it left
        released = {(job.id, a.attempt): a.worker for job in jobs for a in trails[job.id] if a.outcome == "released"}
        by_task = {worker.split("-")[1] for worker in released.values()}
        assert {f"{array}_0", f"{limited}_0"} <= by_task, f"hand-backs: {released}"
        for (job_id, attempt), step in log.handed_back.items():
            assert log.resumed[(job_id, attempt + 1)] == step, (job_id, attempt, step, log.resumed)
        assert any(step for step in log.handed_back.values()), "a trial resumed from a checkpoint"
        assert sum(job.result["resumed_from"] is not None for job in jobs) >= 1
        # the time-limited task ended on its own after its early signal, before its limit
        assert limited_state["JobState"] == "COMPLETED", limited_state
        assert limited_state["RunTime"] < f"00:{minutes:02d}:00", limited_state
        # MLflow holds each (metric, step) once, and the study's accuracies are the local workers'
        client = MlflowClient(service.mlflow_uri)
        for job in jobs:
            for key in client.get_run(job.mlflow_run_id).data.metrics:
                steps = Counter(m.step for m in client.get_metric_history(job.mlflow_run_id, key))
                assert max(steps.values()) == 1, (job.trial_key, key, steps)
        # Trials are deterministic given config and seed: each, handed back or not, has the local
        # workers' reward at every step and their final accuracy
        local_runs = {job.trial_key: job.mlflow_run_id for job in local_jobs}
        local_client = MlflowClient(local.mlflow_uri)
        for job in jobs:
            here = {m.step: m.value for m in client.get_metric_history(job.mlflow_run_id, "train/reward")}
            there = {
                m.step: m.value for m in local_client.get_metric_history(local_runs[job.trial_key], "train/reward")
            }
            assert here == there, job.trial_key
            assert job.result["final_accuracy"] == expected[job.trial_key], job.trial_key
    finally:
        service.engine.dispose()  # no PostgreSQL connection left for the garbage collector
        drop_pg_database(url)
    print(f"local reference {local_s:.0f} s, whole test {time.time() - began:.0f} s")
