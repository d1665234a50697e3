"""Trial start latency with the fork server against a fresh interpreter per trial, side by side.

Submits the same small tiny-arith study (``--trials`` trials of ``--steps`` steps) twice, to a
private data home, and runs each on one CPU worker (``krpo-bench worker --exit-when-idle``): once
with ``--fork-server``, once with ``--no-fork-server``, alternating ``--rounds`` times so a loaded
machine hits both alike. From the job database and MLflow's own timestamps, per trial:
- start latency: the claim (the attempt's ``started_at``) to the end of training step 1 (the
  timestamp MLflow stored with ``train/reward`` at step 1), less that step's own duration
  (``train/step_time_s`` when logged, else nothing is subtracted);
- training time: step 1 to the last step, from the same metric timestamps;
and per study, wall (first claim to last attempt end) over summed training time.

Prints one line per round and mode, then, last, the headline: the median start latency with the
fork server and without, and their ratio.
    python -m benchmarks.startup [--trials 3] [--steps 6] [--rounds 2]

Measured (2 shared cores, load average about 8 from other work, so absolute times are inflated; the
two modes ran alternately in one run): median start latency 2.0 s with the fork server, 12.5 s with
a fresh process (6.3x; 6 trials each). The first trial of each fork-server worker took 8.9 s and
3.6 s: the worker's own first MLflow set-up for the study (``ensure_mlflow``) runs between the claim
and the fork. Study wall over summed training time for these 6-step trials: 3.8-4.9x with the fork
server, 13.8-15.7x fresh.

The quickstart (``time krpo-bench run studies/quickstart.yaml``, fresh data home, same load): 130 s
wall (was 246-258 s), the same results table (grpo 0.760 0.775 0.785, krpo 0.760 0.775 0.760). Its
six trials: MLflow run start to the end of the first step less that step 1.2-3.0 s, 26-30 s of
training each; the trials' span (94 s) over their summed training per worker (166 s / 2) is 1.13.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC
from pathlib import Path

from mlflow import MlflowClient

from krpo_bench.service.studies import StudyService
from krpo_bench.spec.study import StudySpec

TASK = {
    "kind": "arithmetic",
    "num_terms": [2, 2],
    "num_digits": [1, 2],
    "operators": ["+"],
    "parentheses": False,
    "unary_minus": False,
    "templates": ["{expr}="],
    "compact": True,
    "rewards": [{"name": "exact"}],
    "train_size": 512,
    "test_size": 64,
}


def study(name: str, trials: int, steps: int) -> StudySpec:
    training = {
        "group_size": 8,
        "prompts_per_step": 8,
        "max_completion_length": 5,
        "max_steps": steps,
        "eval_every": 0,
        "checkpoint_every": steps,
    }
    return StudySpec.model_validate(
        {
            "name": name,
            "kind": "ablation",
            "seeds": trials,
            "base": {"model": {"name": "tiny-arith"}, "task": TASK, "training": training},
            "variants": {"grpo": {"estimator": {"name": "grpo"}}},
        }
    )


def run_worker(service: StudyService, fork_server: bool) -> None:
    flag = "--fork-server" if fork_server else "--no-fork-server"
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "worker",
        "--gpus",
        "cpu",
        "--slots-per-gpu",
        "1",
        "--exit-when-idle",
        flag,
        "--db",
        service.db_url,
        "--mlflow",
        service.mlflow_uri,
    ]
    subprocess.run(
        cmd,
        check=True,
        env=dict(os.environ, KRPO_BENCH_CPU_THREADS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def measure(service: StudyService, study_id: str) -> tuple[list[float], float, float]:
    """Start latencies (s), the study's wall time (s) and its summed training time (s)."""
    client = MlflowClient(service.mlflow_uri)
    latencies, training, claims, ends = [], 0.0, [], []
    for job in service.jobs(study_id):
        attempt = service.queue.list_attempts(job.id)[-1]
        claimed = attempt.started_at.replace(tzinfo=attempt.started_at.tzinfo or UTC).timestamp()
        ended = attempt.ended_at.replace(tzinfo=attempt.ended_at.tzinfo or UTC).timestamp()
        rewards = sorted(client.get_metric_history(job.mlflow_run_id, "train/reward"), key=lambda m: m.step)
        step_times = {m.step: m.value for m in client.get_metric_history(job.mlflow_run_id, "train/step_time_s")}
        first = rewards[0].timestamp / 1000 - step_times.get(rewards[0].step, 0.0)
        latencies.append(first - claimed)
        training += rewards[-1].timestamp / 1000 - first
        claims.append(claimed)
        ends.append(ended)
    return latencies, max(ends) - min(claims), training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="krpo-startup-"))
    os.environ["KRPO_BENCH_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    service = StudyService(f"sqlite:///{home / 'jobs.db'}", f"sqlite:///{home / 'mlflow.db'}")
    from krpo_bench.models import build_tiny_arith

    build_tiny_arith()  # not part of any trial's start
    latencies: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for fork_server in [True, False] if round_ % 2 == 0 else [False, True]:
            name = f"startup-{'fork' if fork_server else 'fresh'}-{round_}"
            info = service.submit(study(name, args.trials, args.steps))
            run_worker(service, fork_server)
            found, wall, training = measure(service, info.id)
            latencies[fork_server] += found
            print(
                f"round {round_} {'fork server' if fork_server else 'fresh process'}: start latency "
                f"{', '.join(f'{x:.1f}' for x in found)} s; study wall {wall:.1f} s over summed training "
                f"{training:.1f} s = {wall / training:.2f}x",
                flush=True,
            )
    forked, fresh = statistics.median(latencies[True]), statistics.median(latencies[False])
    print(
        f"median trial start latency (claim -> first step): fork server {forked:.1f} s, fresh process "
        f"{fresh:.1f} s ({fresh / forked:.1f}x faster; {len(latencies[True])} trials each, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
