"""A worker: claims jobs into slots (one or more per GPU, or CPU), runs each in a child process.

A job of ``gpus`` N > 1 takes a slot on N distinct GPUs and runs as N processes through accelerate
(``krpo_bench.service.launch``); on a CPU worker it runs as N CPU processes. With
``--slots-per-gpu auto`` each GPU has a memory budget (90 % of its free memory at start) and a job
is claimed into GPUs only while its estimate (``gpu_memory_mib``, set at submit) fits in what is
left on each, up to ``MAX_TRIALS_PER_GPU``; an idle GPU takes any one job, so a trial estimated
above a whole GPU still runs, alone. A fixed ``--slots-per-gpu N`` packs N trials per GPU.

A one-process job is forked from the worker's warm fork server (``krpo_bench.service.forkserver``:
torch, transformers and TRL already imported), so its first step comes within seconds of its claim;
``fork_server=False`` (``krpo-bench worker --no-fork-server``) starts a fresh interpreter instead.

The parent heartbeats every running job and owns its final state (fenced by attempt):
- child exits 0 with a result -> complete / mark_pruned, then the study service tells Optuna;
- child stopped because of a cancel request -> mark_cancelled; because of worker shutdown
  (SIGTERM/SIGINT) -> release (back to the queue without using an attempt);
- child crashes, is OOM-killed or overruns the trial timeout -> fail (retried while attempts last,
  resuming from the newest checkpoint); the job keeps a one-line reason, the traceback goes to
  this worker's output only;
- heartbeat says LOST (lease reclaimed elsewhere) -> the child is killed and nothing is written.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path

from optuna.exceptions import StorageInternalError
from rich.console import Console
from sqlalchemy.exc import DBAPIError

from krpo_bench.service.child import TrialPayload
from krpo_bench.service.forkserver import ForkedTrial, warm_up
from krpo_bench.service.launch import SpawnedTrial, TrialProcess, visible_devices
from krpo_bench.service.queue import UNESTIMATED_GPU_MEMORY_MIB, ClaimedJob, Heartbeat
from krpo_bench.service.studies import StudyService
from krpo_bench.service.transactions import is_database_outage
from krpo_bench.settings import data_home, get_settings
from krpo_bench.spec.names import plain_console, styled

log = logging.getLogger(__name__)
MIB = 1024**2
MEMORY_SAFETY = 0.9  # share of a GPU's free memory (at worker start) that trials may use
MAX_TRIALS_PER_GPU = 8  # --slots-per-gpu auto: at most this many trials share one GPU
IDLE_GPU_ROOM_MIB = 2**31 - 1  # an idle GPU takes any one job, whatever its estimate
LOG_TAIL_CHARS = 4000
ERROR_CHARS = 500


def allocated_gpus(environ: Mapping[str, str]) -> list[str] | None:
    """The GPUs a scheduler gave this process, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's,
    else inside a SLURM job ``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` (none: a job without GPUs);
    None when nothing restricts the process."""
    for name in ("CUDA_VISIBLE_DEVICES", *(("SLURM_STEP_GPUS", "SLURM_JOB_GPUS") if "SLURM_JOB_ID" in environ else ())):
        if name in environ:
            return [g.strip() for g in environ[name].split(",") if g.strip()]
    return [] if "SLURM_JOB_ID" in environ else None


def detect_devices(gpus: str) -> list[str]:
    """``auto`` -> every CUDA device of this process's allocation (:func:`allocated_gpus`, which
    pins ``CUDA_VISIBLE_DEVICES`` to it), else ``cpu``; ``cpu``; or a list like ``0,1`` (CUDA
    ordinals of the visible devices; ValueError for one outside them). Trials get the devices
    through :func:`visible_devices`."""
    if gpus == "cpu":
        return ["cpu"]
    if gpus == "auto":
        allocated = allocated_gpus(os.environ)
        if allocated is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(allocated)  # before CUDA starts in this process
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    devices = [g.strip() for g in gpus.split(",") if g.strip()]
    visible_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))  # raises if one is outside the allocation
    return devices


def gpu_budget_mib(device: str) -> int:
    """The memory trials may use on a GPU: ``MEMORY_SAFETY`` of what is free on it now."""
    import torch

    free, _ = torch.cuda.mem_get_info(int(device))
    return int(free * MEMORY_SAFETY // MIB)


def pick_devices(rooms: dict[str, int], free_slots: dict[str, int], count: int) -> list[str]:
    """The ``count`` devices with a free slot that have the most memory room (then free slots)."""
    candidates = [d for d in rooms if free_slots[d] > 0]
    return sorted(candidates, key=lambda d: (-rooms[d], -free_slots[d], candidates.index(d)))[:count]


def short_reason(error: str) -> str:
    """What a job's attempt error keeps: the first line (exception type and message), at most
    ``ERROR_CHARS`` characters, never a traceback."""
    lines = error.strip().splitlines()
    return lines[0][:ERROR_CHARS] if lines else "unknown error"


def available_cpus(environ: Mapping[str, str]) -> int:
    """The CPUs this process may use: SLURM's ``SLURM_CPUS_PER_TASK`` inside a job that set it, else
    the cores it is bound to (its affinity), else every core."""
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_threads_per_trial(cpu_slots: int) -> int:
    """Torch threads per CPU trial: the ``cpu_threads`` setting, else the CPUs of this process's
    allocation (:func:`available_cpus`) shared by the slots."""
    return get_settings().cpu_threads or max(1, available_cpus(os.environ) // max(1, cpu_slots))


def default_worker_id(environ: Mapping[str, str], hostname: str, pid: int) -> str:
    """A worker's id: ``<host>-<pid>-<random>``, or inside a SLURM job ``slurm-<job>_<array task>-<host>-<pid>``
    (``slurm-<job>-...`` outside an array), so a job's workers show which SLURM task runs each trial."""
    if "SLURM_JOB_ID" in environ:
        task = environ.get("SLURM_ARRAY_TASK_ID")
        job = (
            f"{environ['SLURM_ARRAY_JOB_ID']}_{task}"
            if task and environ.get("SLURM_ARRAY_JOB_ID")
            else environ["SLURM_JOB_ID"]
        )
        return f"slurm-{job}-{hostname}-{pid}"
    return f"{hostname}-{pid}-{uuid.uuid4().hex[:6]}"


@dataclass
class Running:
    job: ClaimedJob
    devices: list[str]
    memory_mib: int  # reserved on each of ``devices``
    process: TrialProcess
    result_file: Path
    log_file: Path
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # cancel | shutdown | timeout


class Worker:
    """Runs jobs from the queue until stopped (or, with ``exit_when_idle``, once it runs none and
    none it could run is queued or running anywhere)."""

    def __init__(
        self,
        service: StudyService,
        *,
        devices: list[str],
        slots_per_device: int | None = None,
        lease_s: float = 60.0,
        heartbeat_s: float = 5.0,
        poll_s: float = 1.0,
        exit_when_idle: bool = False,
        worker_id: str | None = None,
        console: Console | None = None,
        fork_server: bool = True,
    ) -> None:
        self.service = service
        self.queue = service.queue
        self.registry = service.registry
        self.devices = devices
        auto = slots_per_device is None
        self.slots = {d: slots_per_device or (1 if d == "cpu" else MAX_TRIALS_PER_GPU) for d in devices}
        self.budgets = {d: gpu_budget_mib(d) for d in devices if d != "cpu"} if auto else {}
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.exit_when_idle = exit_when_idle
        self.fork_server = fork_server
        self.id = worker_id or default_worker_id(os.environ, socket.gethostname(), os.getpid())
        self.console = console or plain_console(stderr=True, exit_on_broken_pipe=False)
        self.running: dict[str, Running] = {}
        self.stopping = False
        self.workdir = Path(tempfile.mkdtemp(prefix="krpo-worker-", dir=data_home()))

    def say(self, text: str, style: str = "") -> None:
        """Print a line of this worker's output as plain text (names and errors are data: never
        markup, never terminal escapes). A line that cannot be printed (a closed pipe, an encoding the
        terminal lacks) is logged instead: printing never ends the worker or its other trials."""
        try:
            self.console.print(styled(text, style))
        except Exception:
            log.exception("worker %s could not print a line", self.id)

    def request_stop(self, *_: object) -> None:
        """Graceful shutdown: running trials checkpoint and go back to the queue."""
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if self.fork_server:
            warm_up()
        gpu_ids = [int(d) for d in self.devices if d != "cpu"]
        self.registry.register(
            self.id, hostname=socket.gethostname(), pid=os.getpid(), gpus=gpu_ids, slots=sum(self.slots.values())
        )
        budgets = f", memory budgets (MiB) {self.budgets}" if self.budgets else ""
        self.say(f"worker {self.id}: devices {self.devices}, slots {self.slots}{budgets}")
        last_beat = last_reclaim = 0.0
        try:
            while True:
                try:
                    self._reap()
                    now = time.monotonic()
                    if now - last_beat >= self.heartbeat_s:
                        self._heartbeat()
                        last_beat = now
                    if now - last_reclaim >= self.lease_s / 2:
                        for study_id in self._reclaim():
                            self.service.top_up(study_id)
                        last_reclaim = now
                    if self.stopping:
                        self._stop_all("shutdown")
                        if not self.running:
                            break
                    else:
                        claimed = self._fill_slots()
                        if self.exit_when_idle and not self.running and not claimed and not self._work_left():
                            break
                except (DBAPIError, StorageInternalError) as err:
                    if not is_database_outage(err):
                        raise
                    # The database is down for longer than the queue's own retries (or under
                    # Optuna's storage, which does not retry): keep the trials running and try
                    # again next round (leases outlive short outages; finishing a job is idempotent).
                    self.say(f"database unavailable, retrying: {type(err).__name__}: {err}", "yellow")
                time.sleep(self.poll_s)
        finally:
            for run in self.running.values():
                run.process.kill()
            try:
                self.registry.deregister(self.id)
            except DBAPIError as err:
                self.say(f"could not deregister worker {self.id}: {err}", "yellow")

    def _work_left(self) -> bool:
        """Whether a job this worker could run is queued or running anywhere: an idle worker with
        ``exit_when_idle`` stays while another worker may still hand a trial back."""
        gpus = sum(d != "cpu" for d in self.devices)
        return self.queue.has_active_jobs(max_gpus=gpus if gpus else None)

    def _reclaim(self) -> list[str]:
        if self.service.reclaim_expired():
            return [s.id for s in self.service.list(status="running", limit=1000)]
        return []

    def _free_slots(self) -> dict[str, int]:
        """Free slots per device."""
        return {
            device: slots - sum(device in r.devices for r in self.running.values())
            for device, slots in self.slots.items()
        }

    def _rooms(self) -> dict[str, int]:
        """Memory (MiB) left per GPU: its budget less what running jobs reserved; an idle GPU
        takes anything; without budgets (fixed slots) nothing is limited."""
        rooms = {}
        for device in self.slots:
            used = [r.memory_mib for r in self.running.values() if device in r.devices]
            budget = self.budgets.get(device)
            rooms[device] = IDLE_GPU_ROOM_MIB if budget is None or not used else budget - sum(used)
        return rooms

    def _fill_slots(self) -> int:
        claimed = 0
        while True:
            free = self._free_slots()
            open_devices = [d for d, n in free.items() if n > 0]
            if not open_devices:
                break
            if "cpu" in open_devices:
                job = self.queue.claim(self.id, self.lease_s)
                devices = ["cpu"]
            else:
                rooms = self._rooms()
                job = self.queue.claim(
                    self.id,
                    self.lease_s,
                    gpus_free=len(open_devices),
                    room_mib=[rooms[d] for d in open_devices] if self.budgets else None,
                )
                devices = pick_devices(rooms, free, max(1, job.gpus)) if job else []
            if job is None or not self._start(job, devices):
                break
            claimed += 1
        return claimed

    def _start(self, job: ClaimedJob, devices: list[str]) -> bool:
        """Start the job's trial process; False (the job given back) when its study's MLflow
        records cannot be made now (they are created here if the API has not yet)."""
        try:
            parent_run = self._parent_run(job)
        except (DBAPIError, StorageInternalError):
            raise
        except Exception as err:
            self.queue.release(job.id, job.attempt, f"MLflow unavailable: {short_reason(str(err))}")
            self.say(f"gave {job.trial_key} back: its study's MLflow records: {short_reason(str(err))}", "yellow")
            return False
        job_file = self.workdir / f"{job.id}-{job.attempt}.json"
        result_file = self.workdir / f"{job.id}-{job.attempt}.result.json"
        log_file = self.workdir / f"{job.id}-{job.attempt}.log"
        cpu = devices == ["cpu"]
        processes = max(1, job.gpus)
        payload = TrialPayload(
            job=replace(job, config={**job.config, "parent_run_id": parent_run}),
            db_url=self.service.db_url,
            mlflow_uri=self.service.mlflow_uri,
            result_file=result_file,
            cpu_threads=max(1, cpu_threads_per_trial(self.slots.get("cpu", 0)) // processes) if cpu else None,
        )
        job_file.write_text(payload.to_json())
        env = dict(
            os.environ,
            CUDA_VISIBLE_DEVICES="" if cpu else visible_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES")),
        )
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if cpu and processes > 1:
            env["ACCELERATE_USE_CPU"] = "true"  # the ranks train on CPU (gloo)
        process: TrialProcess
        if processes == 1 and self.fork_server:
            process = ForkedTrial(job_file, env, log_file)
        else:
            process = SpawnedTrial(job_file, env, log_file, processes)
        memory = job.gpu_memory_mib or UNESTIMATED_GPU_MEMORY_MIB
        self.running[job.id] = Running(job, devices, memory, process, result_file, log_file)
        where = ",".join(devices) + (f" ({processes} processes)" if processes > 1 else "")
        self.say(f"started {job.trial_key} (attempt {job.attempt}) on {where}")
        return True

    def _parent_run(self, job: ClaimedJob) -> str:
        """The study's MLflow parent run id (made now if the API has not made it yet). MLflow may
        take longer than a lease to answer (a first run creates its store), so the claimed job's
        lease and the running trials' are renewed every heartbeat while it is awaited."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            records = pool.submit(self.service.ensure_mlflow, job.study_id)
            while True:
                try:
                    return records.result(timeout=self.heartbeat_s).parent_run_id
                except FutureTimeout:
                    self.queue.heartbeat(job.id, job.attempt, self.lease_s)
                    self._heartbeat()

    def _heartbeat(self) -> None:
        self.registry.heartbeat(self.id, list(self.running))
        for job_id, run in list(self.running.items()):
            beat = self.queue.heartbeat(job_id, run.job.attempt, self.lease_s)
            if beat == Heartbeat.LOST:
                run.process.kill()
                run.process.wait()
                del self.running[job_id]
                self.say(f"lost the lease of {run.job.trial_key}; stopped it")
            elif beat == Heartbeat.CANCEL:
                self._stop(run, "cancel")
            elif run.job.timeout_s and time.monotonic() - run.started > run.job.timeout_s:
                self._stop(run, "timeout")

    def _stop(self, run: Running, reason: str) -> None:
        if run.stop_reason is None:
            run.stop_reason = reason
            run.process.terminate()

    def _stop_all(self, reason: str) -> None:
        for run in self.running.values():
            self._stop(run, reason)

    def _reap(self) -> None:
        for job_id, run in list(self.running.items()):
            code = run.process.poll()
            if code is None:
                continue
            self._finish(run, code)  # may raise (database down): the run stays and is finished later
            del self.running[job_id]

    def _finish(self, run: Running, code: int) -> None:
        job = run.job
        result = json.loads(run.result_file.read_text()) if run.result_file.exists() else None
        status = result.get("status") if result else None
        if code == 0 and status in ("succeeded", "pruned"):
            write = self.queue.complete if status == "succeeded" else self.queue.mark_pruned
            if write(job.id, job.attempt, result):
                self.say(f"{status} {job.trial_key}: accuracy {result.get('final_accuracy')}")
        elif run.stop_reason == "cancel":
            self.queue.mark_cancelled(job.id, job.attempt)
        elif run.stop_reason == "shutdown" or (run.stop_reason is None and self.stopping):
            # also a child stopped before it could checkpoint, or one the shutdown's signal reached
            # before this loop sent its own (a trial forked in the instant of the stop)
            self.queue.release(job.id, job.attempt, "worker shutdown")
        elif run.stop_reason == "timeout":
            self.queue.fail(job.id, job.attempt, f"timed out after {job.timeout_s:.0f} s")
        else:
            error = short_reason((result or {}).get("error") or f"trial process exited with code {code}")
            tail = run.log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:] if run.log_file.exists() else ""
            self.queue.fail(job.id, job.attempt, error)  # readers of the job see the reason; the traceback stays here
            self.say(f"attempt {job.attempt} of {job.trial_key} failed: {error}", "red")
            self.say(f"--- the end of its log, {run.log_file} ---\n{tail}")
        self.service.job_finished(job.id)
