"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's packages
(``slurm-wlm``, ``munge``), started by hand under a temporary folder and stopped afterwards.

No systemd: each daemon runs in the foreground as a child of the test process. munged runs as the
``munge`` user on a socket of its own (so a system munged, if any, is left alone); the SLURM daemons
run as root with one node at 127.0.0.1 of this machine's cores, ``proctrack/linuxproc``,
``task/none``, no cgroup or accounting plugins, and their state, spool, logs and ports private to the
cluster. Clients (``sbatch``, ``squeue``, ``scancel``) find it through ``SLURM_CONF`` in
:meth:`SlurmCluster.env`. A missing package or a daemon that does not come up fails the test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
START_TIMEOUT_S = 30.0
TIME_LIMIT_SWEEP = "Testing job time limits"
"""slurmctld's log line of its time-limit sweep: every 30 s it sends due ``--signal`` warnings
(a job's is due once its remaining time is at most the warning's lead plus 30 s) and ends jobs
past their limit, so an early signal comes up to 30 s before its time, and a limit is enforced up
to 30 s late."""
SWEEP_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(
    root: Path, *, node: str, cpus: int, memory_mib: int, munge_socket: Path, ctld_port: int, slurmd_port: int
) -> str:
    """slurm.conf of a one-node cluster whose every file lives under ``root``."""
    return "\n".join(
        [
            "ClusterName=krpotest",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "MinJobAge=300",
            "KillWait=30",
            "SlurmctldDebug=debug2",  # logs each time-limit sweep (TIME_LIMIT_SWEEP), which the tests time themselves by
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


class SlurmCluster:
    """The running cluster: its folder, node name and the environment its clients need."""

    def __init__(self, root: Path) -> None:
        missing = [tool for tool in DAEMONS if shutil.which(tool) is None]
        if missing:
            pytest.fail(f"the SLURM tests need {', '.join(missing)}: apt-get install -y slurm-wlm munge", pytrace=False)
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_dir = root / "munge"
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []

    def env(self) -> dict[str, str]:
        """The environment of a SLURM client (and of a job it submits) for this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> None:
        self.root.chmod(0o755)  # munged (as munge) must reach its folder
        for name in ("state", "spool"):
            (self.root / name).mkdir()
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir()
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        self.munge_dir.chmod(0o755)  # munged wants its socket's folder searchable by all
        socket_path = self.munge_dir / "munge.socket"
        self._spawn(
            "munged",
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "munged",
                "--foreground",
                f"--socket={socket_path}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.munge_dir / 'munged.log'}",
                f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
        )
        self._wait(socket_path.exists, "munged's socket")
        memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(
            slurm_conf(
                self.root,
                node=self.node,
                cpus=os.cpu_count() or 1,
                memory_mib=memory_mib // 2,
                munge_socket=socket_path,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
            )
        )
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to be idle")

    def sweeps(self) -> list[float]:
        """Times (epoch seconds) of slurmctld's time-limit sweeps so far."""
        times = []
        for line in (self.root / "slurmctld.log").read_text(errors="replace").splitlines():
            if TIME_LIMIT_SWEEP in line and line.startswith("["):
                times.append(datetime.fromisoformat(line[1 : line.index("]")]).timestamp())
        return times

    def after_sweep(self, timeout: float = 2 * SWEEP_S) -> float:
        """Wait for the next time-limit sweep and return its time: a job started within a few
        seconds of it gets a due warning signal at the sweep after, ``SWEEP_S`` seconds later."""
        seen = len(self.sweeps())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sweeps = self.sweeps()
            if len(sweeps) > seen:
                return sweeps[-1]
            time.sleep(0.1)
        raise AssertionError(f"slurmctld logged no time-limit sweep in {timeout:.0f} s")

    def squeue(self, job: str) -> list[str]:
        """``JOBID STATE`` of each task of ``job`` still known to the queue (running or pending)."""
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%i %T"], env=self.env(), capture_output=True, text=True, check=False
        )
        return out.stdout.splitlines() if out.returncode == 0 else []

    def job_state(self, job: str) -> dict[str, str]:
        """``scontrol show job`` of one job (or array task) as a mapping (JobState, RunTime, ...)."""
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job], env=self.env(), capture_output=True, text=True, check=True
        )
        return dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")
        self.logs.append(log)
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env()))

    def _node_idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True, text=True, check=False
        )
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            dead = [p.args for p in self.processes if p.poll() is not None]
            if dead:
                break
            if ready():
                return
            time.sleep(0.2)
        logs = "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log"))
        )
        self.stop()
        pytest.fail(
            f"the test SLURM cluster did not come up (waiting for {what}; exited: {dead}):\n{logs}", pytrace=False
        )

    def stop(self) -> None:
        """Stop the daemons in reverse order (their jobs are killed with slurmd)."""
        if self.conf.exists() and self.processes and self.processes[-1].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--signal=KILL", "--user", "root"],
                env=self.env(),
                capture_output=True,
                timeout=30,
                check=False,
            )
            deadline = time.monotonic() + 15
            while (
                time.monotonic() < deadline
                and subprocess.run(
                    ["squeue", "-h", "-t", "running,completing"],
                    env=self.env(),
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip()
            ):
                time.sleep(0.2)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster, torn down after the module's tests."""
    root = Path(tempfile.mkdtemp(prefix="krpo-slurm-"))
    cluster = SlurmCluster(root)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
