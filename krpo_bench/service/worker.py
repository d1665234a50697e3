"""A worker: claims jobs into slots (one or more per GPU, or CPU), runs each in a child process.

The parent heartbeats every running job and owns its final state (fenced by attempt):
- child exits 0 with a result -> complete / mark_pruned, then the study service tells Optuna;
- child stopped because of a cancel request -> mark_cancelled; because of worker shutdown
  (SIGTERM/SIGINT) -> release (back to the queue without using an attempt);
- child crashes, is OOM-killed or overruns the trial timeout -> fail (retried while attempts last,
  resuming from the newest checkpoint);
- heartbeat says LOST (lease reclaimed elsewhere) -> the child is killed and nothing is written.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from sqlalchemy.exc import DBAPIError

from krpo_bench.service.queue import ClaimedJob, Heartbeat, _is_transient
from krpo_bench.service.studies import StudyService
from krpo_bench.settings import data_home

GIB = 1024**3
TRIAL_MEMORY_BUDGET = 8 * GIB  # a SmolLM2-135M-sized TRL trial with headroom (see README)
LOG_TAIL_CHARS = 4000
PR_SET_PDEATHSIG = 1


def detect_devices(gpus: str) -> list[str]:
    """``auto`` -> every visible CUDA device (else ``cpu``); ``cpu``; or a list like ``0,1``."""
    if gpus == "cpu":
        return ["cpu"]
    if gpus == "auto":
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    return [g.strip() for g in gpus.split(",") if g.strip()]


def auto_slots(device: str) -> int:
    """Concurrent trials per device: 1 on CPU; on a GPU as many trial budgets as free memory holds (max 8)."""
    if device == "cpu":
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info(int(device))
    return max(1, min(8, int(free * 0.9 // TRIAL_MEMORY_BUDGET)))


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the worker dies, so a crashed or
    killed worker never leaves a trial running that another worker is about to resume."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _cpu_threads(cpu_slots: int) -> int:
    """Torch threads per CPU trial: ``KRPO_BENCH_CPU_THREADS``, else the cores shared by the slots."""
    return int(os.environ.get("KRPO_BENCH_CPU_THREADS") or max(1, (os.cpu_count() or 1) // max(1, cpu_slots)))


@dataclass
class Running:
    job: ClaimedJob
    device: str
    process: subprocess.Popen
    result_file: Path
    log_file: Path
    started: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # cancel | shutdown | timeout


class Worker:
    """Runs jobs from the queue until stopped (or, with ``exit_when_idle``, until none are left)."""

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
    ) -> None:
        self.service = service
        self.queue = service.queue
        self.devices = devices
        self.slots = {d: slots_per_device or auto_slots(d) for d in devices}
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.exit_when_idle = exit_when_idle
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.console = console or Console(stderr=True)
        self.running: dict[str, Running] = {}
        self.stopping = False
        self.workdir = Path(tempfile.mkdtemp(prefix="krpo-worker-", dir=data_home()))

    def request_stop(self, *_: object) -> None:
        """Graceful shutdown: running trials checkpoint and go back to the queue."""
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        gpu_ids = [int(d) for d in self.devices if d != "cpu"]
        self.queue.register_worker(self.id, hostname=socket.gethostname(), pid=os.getpid(), gpus=gpu_ids, slots=sum(self.slots.values()))
        self.console.print(f"worker {self.id}: devices {self.devices}, slots {self.slots}")
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
                        if self.exit_when_idle and not self.running and not claimed:
                            break
                except DBAPIError as err:
                    if not _is_transient(err):
                        raise
                    # The database is down for longer than the queue's own retries: keep the
                    # trials running and try again next round (leases outlive short outages).
                    self.console.print(f"[yellow]database unavailable, retrying: {type(err.orig or err).__name__}[/yellow]")
                time.sleep(self.poll_s)
        finally:
            for run in self.running.values():
                run.process.kill()
            try:
                self.queue.deregister_worker(self.id)
            except DBAPIError as err:
                self.console.print(f"[yellow]could not deregister worker {self.id}: {err}[/yellow]")

    def _reclaim(self) -> list[str]:
        if self.queue.reclaim_expired():
            return [s.id for s in self.service.list(status="running", limit=1000)]
        return []

    def _free_slots(self) -> list[str]:
        free = []
        for device, slots in self.slots.items():
            used = sum(1 for r in self.running.values() if r.device == device)
            free += [device] * (slots - used)
        return free

    def _fill_slots(self) -> int:
        claimed = 0
        for device in self._free_slots():
            job = self.queue.claim(self.id, self.lease_s, gpus_free=1 if device != "cpu" else None)
            if job is None:
                break
            self._start(job, device)
            claimed += 1
        return claimed

    def _start(self, job: ClaimedJob, device: str) -> None:
        job_file = self.workdir / f"{job.id}-{job.attempt}.json"
        result_file = self.workdir / f"{job.id}-{job.attempt}.result.json"
        log_file = self.workdir / f"{job.id}-{job.attempt}.log"
        cpu_slots = self.slots.get("cpu", 0)
        payload = {
            "job": {k: v for k, v in asdict(job).items() if k != "lease_expires_at"},
            "db_url": self.service.db_url,
            "mlflow_uri": self.service.mlflow_uri,
            "result_file": str(result_file),
            "cpu_threads": _cpu_threads(cpu_slots) if device == "cpu" else None,
        }
        job_file.write_text(json.dumps(payload, default=str))
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if device == "cpu" else device)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "krpo_bench.service.child", str(job_file)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.running[job.id] = Running(job, device, process, result_file, log_file)
        self.console.print(f"started {job.trial_key} (attempt {job.attempt}) on {device}")

    def _heartbeat(self) -> None:
        self.queue.worker_heartbeat(self.id, list(self.running))
        for job_id, run in list(self.running.items()):
            beat = self.queue.heartbeat(job_id, run.job.attempt, self.lease_s)
            if beat == Heartbeat.LOST:
                run.process.kill()
                run.process.wait()
                del self.running[job_id]
                self.console.print(f"lost the lease of {run.job.trial_key}; stopped it")
            elif beat == Heartbeat.CANCEL:
                self._stop(run, "cancel")
            elif run.job.timeout_s and time.monotonic() - run.started > run.job.timeout_s:
                self._stop(run, "timeout")

    def _stop(self, run: Running, reason: str) -> None:
        if run.stop_reason is None:
            run.stop_reason = reason
            run.process.send_signal(signal.SIGTERM)

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
                self.console.print(f"{status} {job.trial_key}: accuracy {result.get('final_accuracy')}")
        elif run.stop_reason == "cancel":
            self.queue.mark_cancelled(job.id, job.attempt)
        elif run.stop_reason == "shutdown":  # also a child stopped before it could checkpoint
            self.queue.release(job.id, job.attempt, "worker shutdown")
        elif run.stop_reason == "timeout":
            self.queue.fail(job.id, job.attempt, f"timed out after {job.timeout_s:.0f} s")
        else:
            error = (result or {}).get("error") or f"trial process exited with code {code}"
            tail = run.log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:] if run.log_file.exists() else ""
            self.queue.fail(job.id, job.attempt, f"{error}\n{tail}".strip())
            self.console.print(f"[red]attempt {job.attempt} of {job.trial_key} failed[/red]: {error}")
        self.service.job_finished(job.id)
