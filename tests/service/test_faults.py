"""Fault injection with real processes: a PostgreSQL restart during a study, workers SIGKILLed at
random points (seeded), the MLflow tracking server going away mid-trial, and checkpoint writes
that fail (full disk, unwritable folder). Each fault must end with every job finished exactly once,
or with a clear error that names what failed.

Knobs: ``KRPO_FAULT_KILL_JOBS`` (jobs in the kill study, default 10; the full scenario is 50),
``KRPO_FAULT_KILL_SEED`` (seed of the kill schedule). The restart test stops and starts a private
PostgreSQL server of its own (tests.private_pg), never the server the other tests share: under
pytest-xdist they run beside it. It fails, never skips, when no server can be made.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from mlflow import MlflowClient
from sqlalchemy.engine import make_url

from krpo_bench.advantages import get_estimator
from krpo_bench.models import load_model
from krpo_bench.service.optuna_store import dispose_optuna_storage
from krpo_bench.service.studies import StudyInfo, StudyService
from krpo_bench.settings import data_home
from krpo_bench.spec.trial import TrialSpec
from krpo_bench.tasks import build_task
from krpo_bench.tracking import RETRY_ENV, SPOOL_DIR, RunTracker, TrackingUnavailableError
from krpo_bench.training.trainer import BaselineGRPOTrainer
from krpo_bench.training.trial import RUN_ID_FILE, grpo_config, run_trial
from tests.db import PG_ADMIN_URL, create_pg_database, drop_pg_database
from tests.private_pg import PrivatePostgres
from tests.trial_specs import tiny_trial

KILL_JOBS = int(os.environ.get("KRPO_FAULT_KILL_JOBS", "10"))
KILL_SEED = int(os.environ.get("KRPO_FAULT_KILL_SEED", "20251124"))
DEADLINE_MARGIN_S = 2.5  # past an MLflow retry deadline: the last request, a training step, a checkpoint


# -- helpers ------------------------------------------------------------------------------------


def tiny(steps: int, **training: Any) -> dict:
    """A tiny-arith trial that is cheap to evaluate (8 test prompts, pass@1)."""
    spec = tiny_trial(steps=steps, pass_at_k=1, **training)
    spec["task"]["test_size"] = 8
    return spec


def ablation(name: str, *, seeds: int, steps: int, max_attempts: int = 3, **training: Any) -> dict:
    base = {k: v for k, v in tiny(steps, **training).items() if k != "name"}
    return {
        "name": name,
        "kind": "ablation",
        "base": base,
        "variants": {"grpo": {"estimator": {"name": "grpo"}}},
        "seeds": seeds,
        "resources": {"max_attempts": max_attempts},
    }


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def pg_url() -> Any:
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def pg_service(pg_url: str, tmp_path: Path) -> Iterator[StudyService]:
    """A service on ``pg_url``; its engine is disposed before the database is dropped."""
    service = StudyService(pg_url, f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield service
    service.engine.dispose()  # no PostgreSQL connection left for the garbage collector


def start_worker(
    service: StudyService,
    log: IO[bytes],
    *,
    lease_s: float,
    heartbeat_s: float = 1.0,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "worker",
        "--gpus",
        "cpu",
        "--slots-per-gpu",
        "1",
        "--db",
        service.db_url,
        "--mlflow",
        service.mlflow_uri,
        "--lease-s",
        str(lease_s),
        "--heartbeat-s",
        str(heartbeat_s),
    ]
    env = dict(os.environ, KRPO_BENCH_CPU_THREADS="1")
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 120) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_worker(proc: subprocess.Popen, *, with_trials: bool) -> None:
    """SIGKILL a worker's process group, and with ``with_trials`` its trial processes too (each
    runs in a session of its own): a crashed machine. Without, the trials are orphaned."""
    os.killpg(proc.pid, signal.SIGSTOP)  # freeze it so it cannot start a trial meanwhile
    trials = children(proc.pid) if with_trials else []
    for pid in trials:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def worker_pid(owner: str | None) -> int | None:
    """The pid in a worker id ``<host>-<pid>-<hex>``."""
    try:
        return int(owner.rsplit("-", 2)[1]) if owner else None
    except (IndexError, ValueError):
        return None


def trial_runs(service: StudyService, info: StudyInfo) -> list:
    client = MlflowClient(service.mlflow_uri)
    runs = client.search_runs(
        [service.get(info.id).mlflow_experiment_id], f"tags.`krpo.study_id` = '{info.id}'", max_results=5000
    )
    return [r for r in runs if "krpo.trial_key" in r.data.tags]


def curve_steps(client: MlflowClient, run_id: str, key: str = "train/reward") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _plain(outcomes: dict[str, list[str]]) -> dict[str, list[str]]:
    return {key: [str(o) for o in values] for key, values in outcomes.items()}


def assert_each_job_finished_once(service: StudyService, info: StudyInfo, steps: int) -> dict[str, list[str]]:
    """One succeeded row and attempt per job (its last attempt: results are fenced), one FINISHED
    MLflow run per trial key holding the job's result. Returns each job's attempt outcomes."""
    jobs = service.jobs(info.id)
    assert len(jobs) == info.total
    outcomes = {}
    for job in jobs:
        attempts = service.queue.list_attempts(job.id)
        outcomes[job.trial_key] = [a.outcome for a in attempts]
        assert job.status == "succeeded", (job.trial_key, job.status, job.last_error)
        assert [a.attempt for a in attempts] == list(range(1, job.attempt + 1))
        assert outcomes[job.trial_key].count("succeeded") == 1 and attempts[-1].outcome == "succeeded", outcomes
        assert job.result["status"] == "succeeded" and job.result["steps"] == steps
        assert job.result["mlflow_run_id"] == job.mlflow_run_id
    runs = trial_runs(service, info)
    by_key = Counter(r.data.tags["krpo.trial_key"] for r in runs)
    assert by_key == Counter({job.trial_key: 1 for job in jobs}), f"MLflow runs per trial key: {by_key}"
    client = MlflowClient(service.mlflow_uri)
    for job in jobs:
        run = next(r for r in runs if r.data.tags["krpo.trial_key"] == job.trial_key)
        assert run.info.run_id == job.mlflow_run_id and run.info.status == "FINISHED"
        assert run.data.metrics["final/accuracy"] == job.result["final_accuracy"]
        assert set(curve_steps(client, run.info.run_id)) == set(range(1, steps + 1))
    return outcomes


# -- 1. the database restarts during a study ----------------------------------------------------


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[tuple[PrivatePostgres, StudyService]]:
    """A private PostgreSQL server (tests.private_pg), which the test may restart without cutting the
    connections of the tests beside it, and a service on it (disposed before the server goes)."""
    server = PrivatePostgres()
    try:
        server.start()
        service = StudyService(server.url, f"sqlite:///{tmp_path / 'mlflow.db'}")
        yield server, service
        service.engine.dispose()
        dispose_optuna_storage(server.url)
    finally:
        server.remove()


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_ride_out_a_database_restart(private_pg: tuple[PrivatePostgres, StudyService], tmp_path: Path):
    server, service = private_pg
    # 40 steps (about 4 s of training): long enough that the two workers' trials reliably overlap
    # (with 8 steps, a trial's training window was shorter than the other worker's process start-up)
    info = service.submit(ablation("db-restart", seeds=4, steps=40, checkpoint_every=10))
    logs = [open(tmp_path / f"worker-{i}.log", "wb") for i in range(2)]
    workers = [start_worker(service, log, lease_s=20) for log in logs]
    try:
        wait_for(
            lambda: sum(j.status == "running" and j.mlflow_run_id is not None for j in service.jobs(info.id)) == 2,
            240,
            "both workers to be training",
        )
        outage = server.restart(down_s=7.0)  # longer than the queue's whole retry backoff (at most ~4.5 s)

        def finished() -> bool:
            for i, w in enumerate(workers):  # "the workers keep running"
                assert w.poll() is None, (
                    f"worker {i} died: " + (tmp_path / f"worker-{i}.log").read_text(errors="replace")[-2000:]
                )
            return service.get(info.id).status in ("succeeded", "failed")

        wait_for(finished, 400, "the study to finish")
    finally:
        for w in workers:
            stop(w)
        for log in logs:
            log.close()
    worker_logs = "".join((tmp_path / f"worker-{i}.log").read_text(errors="replace") for i in range(2))
    assert "database unavailable" in worker_logs, "the outage should have outlasted the queue's own retries"
    outcomes = assert_each_job_finished_once(service, info, steps=40)
    print(f"\nPostgreSQL down ~{outage:.1f} s; attempt outcomes per job: {_plain(outcomes)}")


def test_optuna_reports_ride_out_a_database_outage(pg_url: str, pg_service: StudyService):
    import optuna

    from krpo_bench.service.optuna_store import optuna_storage
    from krpo_bench.service.transactions import is_database_outage

    service = pg_service
    base = {k: v for k, v in tiny(8, eval_every=2).items() if k != "name"}
    base["estimator"] = {"name": "krpo"}
    info = service.submit(
        {
            "name": "outage-search",
            "kind": "search",
            "base": base,
            "space": {"estimator.Q": {"type": "log_uniform", "low": 1e-6, "high": 1e-3}},
            "pruner": {"type": "median", "startup_trials": 0, "warmup_steps": 0},
            "n_trials": 2,
            "parallelism": 1,
        }
    )
    job = service.jobs(info.id)[0]
    assert service.report_intermediate(job, 2, 0.4) is False
    name = make_url(pg_url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            assert service.report_intermediate(job, 4, 0.5) is False, "an outage loses the report, not the trial"
            with pytest.raises(optuna.exceptions.StorageInternalError) as wrapped:
                optuna_storage(pg_url).get_all_studies()
            assert is_database_outage(wrapped.value), f"the worker loop must see {wrapped.value!r} as an outage"
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert service.report_intermediate(job, 6, 0.6) is False
    ostudy = optuna.load_study(study_name=job.config["optuna_study_name"], storage=optuna_storage(pg_url))
    trial = next(t for t in ostudy.get_trials(deepcopy=False) if t.number == job.optuna_trial_number)
    assert trial.intermediate_values == {2: 0.4, 6: 0.6}


# -- 2. workers SIGKILLed at random points ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_randomly_killed_workers_finish_every_job_exactly_once(pg_service: StudyService, tmp_path: Path):
    steps = 16
    service = pg_service
    info = service.submit(
        ablation(
            "kills", seeds=KILL_JOBS, steps=steps, checkpoint_every=4, group_size=4, prompts_per_step=4, max_attempts=10
        )
    )
    rng = random.Random(KILL_SEED)
    # Kill points spread over the study: after a random number of jobs has finished, a random delay
    # (the victim's trial is then at a random phase: starting up, training, checkpointing, ending);
    # every other kill instead lands at a random moment after a training trial wrote a checkpoint.
    max_kills = max(3, KILL_JOBS // 5)
    kill_points = sorted(
        (rng.randrange(KILL_JOBS), i % 2 == 0, rng.uniform(0.0, 15.0), rng.random(), rng.random() < 0.75)
        for i in range(max_kills)
    )
    lease_s = 4.0
    logs: list[IO[bytes]] = []

    def spawn() -> subprocess.Popen:
        logs.append(open(tmp_path / f"worker-{len(logs)}.log", "wb"))
        return start_worker(service, logs[-1], lease_s=lease_s)

    def finished() -> int:
        counts = service.get(info.id).counts
        return sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled", "pruned"))

    def running_jobs() -> list:
        return [j for j in service.jobs(info.id) if j.status == "running"]

    def checkpointed(job: Any) -> bool:  # this attempt is training: a checkpoint, no result yet
        run_dir = data_home() / "trials" / job.config["trial"]["trial_id"]
        return any(run_dir.glob("checkpoint-*")) and not (run_dir / "result.json").exists()

    workers = [spawn(), spawn()]
    kills: list[tuple[int, str, str, str]] = []
    started = time.monotonic()
    budget = 120 + 60 * KILL_JOBS
    try:
        for after_jobs, in_training, delay, pick, with_trials in kill_points:
            wait_for(lambda: finished() >= after_jobs, budget, f"{after_jobs} finished jobs", every=1)
            if in_training:
                wait_for(
                    lambda: finished() == KILL_JOBS or any(map(checkpointed, running_jobs())),
                    budget,
                    "a trial with a checkpoint",
                    every=0.25,
                )
                delay /= 30  # 0-0.5 s later
            time.sleep(delay)
            if finished() == KILL_JOBS:
                break
            # The victim: a random worker holding a trial right now (any worker if none does);
            # for a kill in training, one whose trial has a checkpoint.
            jobs = [j for j in running_jobs() if not in_training or checkpointed(j)]
            holders = {worker_pid(j.owner): j.trial_key for j in jobs}
            busy = [i for i, w in enumerate(workers) if w.pid in holders] or list(range(len(workers)))
            victim = busy[int(pick * len(busy))]
            kills.append(
                (
                    round(time.monotonic() - started),
                    holders.get(workers[victim].pid, "nothing"),
                    "worker+trial" if with_trials else "worker only",
                    "after a checkpoint" if in_training else "any",
                )
            )
            kill_worker(workers[victim], with_trials=with_trials)
            workers[victim] = spawn()
        wait_for(lambda: finished() == KILL_JOBS, budget, "the study to finish", every=2)
    finally:
        for w in workers:
            stop(w)
        for log in logs:
            log.close()
    took = time.monotonic() - started
    outcomes = assert_each_job_finished_once(service, info, steps=steps)
    expired = sum(o.count("expired") for o in outcomes.values())
    assert expired >= 1, f"no kill hit a running trial: {kills}"
    resumed = sum(1 for j in service.jobs(info.id) if j.result["resumed_from"] is not None)
    print(
        f"\n{KILL_JOBS} jobs, {len(kills)} kills in {took:.0f} s (seed {KILL_SEED}): {kills}; "
        f"{expired} attempts expired, {resumed} trials resumed from a checkpoint; "
        f"outcomes of jobs retried: {_plain({k: o for k, o in outcomes.items() if len(o) > 1})}"
    )


@pytest.mark.slow
def test_an_attempt_killed_after_its_last_checkpoint_is_finished_without_extra_steps(tmp_path: Path):
    """Found by the kill test: the last checkpoint was written, the result was not. The retry must
    not train a step past max_steps (transformers does, resuming at the limit)."""
    steps = 4
    spec = TrialSpec.model_validate(tiny(steps, checkpoint_every=2))
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_trial(spec, run_dir=tmp_path / "run", tracking_uri=mlflow_uri)
    (tmp_path / "run" / "result.json").unlink()  # as if killed right after the final checkpoint
    again = run_trial(spec, run_dir=tmp_path / "run", tracking_uri=mlflow_uri)
    assert again.status == "succeeded" and again.steps == steps and again.resumed_from == steps
    assert again.mlflow_run_id == first.mlflow_run_id
    assert again.final_accuracy == first.final_accuracy, "the same trained weights are evaluated"
    assert curve_steps(MlflowClient(mlflow_uri), first.mlflow_run_id) == list(range(1, steps + 1))


# -- 3. the MLflow tracking server goes away ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on loopback over a SQLite store; killed and restarted on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            (self.root / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=self.root, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc
        wait_for(lambda: self.healthy() or proc.poll() is not None, timeout, "the MLflow server to start")
        assert proc.poll() is None, (self.root / "server.log").read_text()[-3000:]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def one_torch_thread() -> Any:
    """In-process trials use one thread, as worker trials do: two OpenMP threads on two shared
    cores stall for seconds whenever another process (a starting MLflow server) takes a core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StepHook:
    """``should_stop`` for run_trial that never stops but runs ``action`` after step ``at``."""

    def __init__(self, at: int, action: Callable[[], None]) -> None:
        self.at, self.action, self.step = at, action, 0

    def __call__(self) -> bool:
        self.step += 1
        if self.step == self.at:
            self.action()
        return False


@pytest.mark.slow
def test_mlflow_outage_mid_trial_loses_no_metrics(mlflow_server: MlflowServer, tmp_path: Path, one_torch_thread: None):
    steps = 60
    spec = TrialSpec.model_validate(tiny(steps, checkpoint_every=20))
    outage: dict[str, float] = {}

    def bring_it_back() -> None:  # a fresh server process (same store, same port) after ~10 s
        time.sleep(4)
        mlflow_server.start()
        outage["up"] = time.monotonic()

    restart = threading.Thread(target=bring_it_back)
    during: list[int] = []

    def take_it_down() -> None:
        mlflow_server.kill()
        outage["down"] = time.monotonic()
        restart.start()

    hook = StepHook(3, take_it_down)

    def should_stop() -> bool:
        hook()
        if "down" in outage and "up" not in outage:
            during.append(hook.step)
        return False

    result = run_trial(spec, run_dir=tmp_path / "run", tracking_uri=mlflow_server.url, should_stop=should_stop)
    restart.join()
    down_s = outage["up"] - outage["down"]
    assert len(during) >= 3, f"only steps {during} ran while the server was down ({down_s:.1f} s)"
    assert result.status == "succeeded" and result.steps == steps
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/reward", "train/loss", "adv/mean"):
        assert curve_steps(client, result.mlflow_run_id, key) == list(range(1, steps + 1)), key
    assert curve_steps(client, result.mlflow_run_id, "eval/accuracy") == [0, steps]
    assert run.data.metrics["final/accuracy"] == result.final_accuracy
    assert run.data.params["estimator.name"] == "grpo"
    print(f"\nMLflow server down {down_s:.1f} s while steps {during[0]}..{during[-1]} of {steps} ran")


@pytest.mark.slow
def test_mlflow_down_past_the_deadline_fails_the_attempt_and_the_retry_resumes(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None
):
    steps, deadline_s = 40, 3
    spec = TrialSpec.model_validate(tiny(steps, checkpoint_every=2))
    run_dir = tmp_path / "run"
    killed: list[float] = []
    hook = StepHook(4, lambda: (mlflow_server.kill(), killed.append(time.monotonic())))
    monkeypatch.setenv(RETRY_ENV, str(deadline_s))
    with pytest.raises(TrackingUnavailableError) as failure:
        run_trial(spec, run_dir=run_dir, tracking_uri=mlflow_server.url, should_stop=hook)
    gave_up_after = time.monotonic() - killed[0]
    message = str(failure.value)
    assert mlflow_server.url in message and RETRY_ENV in message and "unreachable" in message, message
    print(f"\ngave up {gave_up_after:.2f} s after the server died (deadline {deadline_s} s)")
    assert deadline_s <= gave_up_after < deadline_s + DEADLINE_MARGIN_S, gave_up_after
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    spool = data_home() / SPOOL_DIR / f"{run_id}.jsonl"
    assert spool.exists() and str(spool) in message, "unsent writes are kept for the retry"
    assert list(run_dir.glob("checkpoint-*"))

    # The job's retry: the same trial in the same run folder, once the server is back.
    mlflow_server.start()
    monkeypatch.setenv(RETRY_ENV, "120")
    again = run_trial(spec, run_dir=run_dir, tracking_uri=mlflow_server.url)
    assert again.status == "succeeded" and again.steps == steps
    assert again.resumed_from is not None and again.mlflow_run_id == run_id
    assert not spool.exists()
    client = MlflowClient(mlflow_server.url)
    assert client.get_run(run_id).info.status == "FINISHED"
    # Every step is there exactly once: the spooled writes were replayed, and the steps after the
    # checkpoint that the retry re-ran were not logged a second time.
    assert sorted(curve_steps(client, run_id)) == list(range(1, steps + 1))
    assert client.get_run(run_id).data.metrics["final/accuracy"] == again.final_accuracy


def test_unreachable_tracking_server_raises_a_clear_error_after_the_deadline():
    tracker = RunTracker(f"http://127.0.0.1:{free_port()}", retry_s=1.0)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=rf"unreachable .*{RETRY_ENV}.*could not create the run"):
        tracker.start("experiment", "run")
    assert 1.0 <= time.monotonic() - started < 1.0 + DEADLINE_MARGIN_S


def test_retry_deadline_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(RETRY_ENV, "12.5")
    assert RunTracker("http://127.0.0.1:9").retry_s == 12.5
    monkeypatch.setenv(RETRY_ENV, "soon")
    with pytest.raises(ValueError, match=RETRY_ENV):
        RunTracker("http://127.0.0.1:9")


# -- 4. checkpoint writes that fail -------------------------------------------------------------


def test_unwritable_checkpoint_folder_names_the_folder_and_the_os_error(tmp_path: Path):
    spec = TrialSpec.model_validate(tiny(4))
    task = build_task(spec.task)
    loaded = load_model(spec.model)
    run = tmp_path / "parent" / "run"
    trainer = BaselineGRPOTrainer(
        model=loaded.model,
        reward_funcs=task.reward_funcs,
        args=grpo_config(spec, run, use_cuda=False, bf16=False, reward_weights=list(task.reward_weights)),
        train_dataset=task.train,
        processing_class=loaded.tokenizer,
        estimator=get_estimator("grpo"),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    trainer.state.global_step = 2
    shutil.rmtree(run.parent, ignore_errors=True)
    run.parent.write_text("a regular file where the run folder's parent should be")
    with pytest.raises(RuntimeError) as failure:
        trainer._save_checkpoint(trainer.model, trial=None)
    message = str(failure.value)
    assert message.startswith(f"could not write checkpoint {run / 'checkpoint-2'}: "), message
    assert "NotADirectoryError: [Errno 20] Not a directory" in message, message


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the worker before exec; its trial processes inherit both
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.postgres
def test_a_full_disk_fails_the_job_naming_the_checkpoint_folder(pg_service: StudyService, tmp_path: Path):
    service = pg_service
    info = service.submit(ablation("disk-full", seeds=1, steps=4, checkpoint_every=2, max_attempts=1))
    # 2 MiB: the MLflow store and logs fit, the 3.4 MB model file of a checkpoint does not.
    with open(tmp_path / "worker.log", "wb") as log:
        worker = start_worker(service, log, lease_s=20, preexec_fn=_limit_file_size(2 * 2**20))
        try:
            job = wait_for(
                lambda: next((j for j in service.jobs(info.id) if j.status in ("failed", "succeeded")), None),
                300,
                "the job to end",
            )
        finally:
            stop(worker)
    run_dir = data_home() / "trials" / job.config["trial"]["trial_id"]
    assert job.status == "failed", job.status
    first_line = job.last_error.splitlines()[0]
    assert first_line.startswith(f"RuntimeError: could not write checkpoint {run_dir / 'checkpoint-2'}: "), first_line
    assert "File too large" in first_line, first_line
    assert not list(run_dir.glob("checkpoint-*")) and not list(run_dir.glob(".checkpoint-staging-*")), (
        "a failed save leaves no torn checkpoint behind"
    )
    assert MlflowClient(service.mlflow_uri).get_run(job.mlflow_run_id).info.status == "FAILED"
    print(f"\nlast_error: {first_line}")
