"""API latency on loopback: ``GET /api/v1/studies`` with 1,000 studies stored, and a small ``POST``.

Seeds a temporary SQLite job database directly with SQLAlchemy (1,000 study rows, 4 jobs each through
the queue's ``enqueue_many``; no MLflow runs: listing never reads MLflow), starts a real
``krpo-bench serve`` process, then runs 50 concurrent clients (closed loop, keep-alive) and prints
p50/p99 latency and throughput. The GET is measured as served (list pages reused for 1 s) and, for
comparison, on a server with that cache off (concurrent misses of a page still share one query). The POST submits a one-trial study: the request
stores the study and its job; the server's background outbox then creates each study's MLflow
experiment and parent run (a SQLite store), and the time until the last of them exists after the last
POST is printed too. The last line printed is the GET p99 in ms (as served):
``python -m benchmarks.api [--requests N] [--posts N] [--clients C]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from sqlalchemy import func, insert, select

from krpo_bench.service.db import Study, make_engine, new_id, upgrade, utcnow
from krpo_bench.service.queue import JobQueue, NewJob
from krpo_bench.spec.study import validate_study

BASE = {
    "model": {"name": "tiny-arith"},
    "task": {
        "kind": "arithmetic",
        "num_terms": [2, 2],
        "num_digits": [1, 2],
        "operators": ["+"],
        "parentheses": False,
        "unary_minus": False,
        "templates": ["{expr}="],
        "compact": True,
        "rewards": [{"name": "exact"}],
    },
    "training": {"max_steps": 5},
}
SPEC = {
    "name": "bench",
    "kind": "ablation",
    "seeds": 2,
    "base": BASE,
    "variants": {"grpo": {"estimator": {"name": "grpo"}}, "krpo": {"estimator": {"name": "krpo"}}},
}
SMALL_SPEC = {"name": "bench-post", "kind": "ablation", "seeds": 1, "base": BASE}


def seed(db_url: str, n_studies: int) -> None:
    """``n_studies`` stored studies of four queued jobs each."""
    engine = make_engine(db_url)
    upgrade(engine)
    spec = validate_study(SPEC).model_dump(mode="json")
    ids = [new_id() for _ in range(n_studies)]
    rows = [
        dict(
            id=i,
            name=f"bench-{n}",
            kind="ablation",
            spec=spec,
            status="running",
            total_jobs=4,
            mlflow_pending=False,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        for n, i in enumerate(ids)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Study), rows)
    queue = JobQueue(engine)
    for study_id in ids:
        queue.enqueue_many(
            study_id, [NewJob(f"{v}|seed={s}", {"variant": v, "seed": s}) for v in ("grpo", "krpo") for s in (0, 1)]
        )
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, db_url: str, **env_vars: str) -> tuple[subprocess.Popen, str]:
    """A ``krpo-bench serve`` process on a free loopback port, once it is ready."""
    port = free_port()
    env = dict(
        os.environ, KRPO_BENCH_HOME=str(folder), KRPO_BENCH_API_TOKENS_FILE=str(folder / "no-tokens.json"), **env_vars
    )
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "serve",
        "--port",
        str(port),
        "--db",
        db_url,
        "--mlflow",
        f"sqlite:///{folder / 'mlflow.db'}",
    ]
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready; see {folder / 'server.log'}")


async def load(url: str, method: str, path: str, requests: int, clients: int, body: dict | None = None) -> list[float]:
    """Latencies (s) of ``requests`` calls made by ``clients`` concurrent closed-loop clients, each
    on its own keep-alive connection (aiohttp, which MLflow already depends on: a load generator
    must cost less CPU than the server it measures, and httpx's async client costs more)."""
    latencies: list[float] = []
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    async def client(n: int) -> None:
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=120)) as session:
            for _ in range(n):
                start = time.perf_counter()
                async with session.request(method, path, json=body) as response:
                    text = await response.read()
                latencies.append(time.perf_counter() - start)
                if response.status >= 400:
                    raise RuntimeError(f"{method} {path}: {response.status} {text[:200]!r}")

    await asyncio.gather(*(client(n) for n in per_client))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(label: str, latencies: list[float], seconds: float) -> float:
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(
        f"{label:30s} n={len(latencies):5d}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  {len(latencies) / seconds:7.1f} req/s"
    )
    return p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000, help="GET requests")
    parser.add_argument("--posts", type=int, default=200, help="POST requests")
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="krpo-api-bench-") as tmp:
        folder = Path(tmp)
        db_url = f"sqlite:///{folder / 'jobs.db'}"
        started = time.perf_counter()
        seed(db_url, args.studies)
        print(f"seeded {args.studies} studies (4 jobs each) in {time.perf_counter() - started:.1f} s")
        proc, url = start_server(folder, db_url, KRPO_BENCH_LIST_CACHE_S="0")
        try:
            report(
                "GET /api/v1/studies, no cache",
                *measure(url, "GET", "/api/v1/studies", args.requests // 4, args.clients),
            )
        finally:
            stop(proc)
        proc, url = start_server(folder, db_url)
        try:
            httpx.post(f"{url}/api/v1/studies", json=SMALL_SPEC, timeout=120).raise_for_status()
            outbox_lag(db_url)  # its MLflow records create the MLflow store
            p99 = report("GET /api/v1/studies", *measure(url, "GET", "/api/v1/studies", args.requests, args.clients))
            report(
                "POST /api/v1/studies", *measure(url, "POST", "/api/v1/studies", args.posts, args.clients, SMALL_SPEC)
            )
            print(f"MLflow records of every posted study {outbox_lag(db_url):.1f} s after the last POST")
        finally:
            stop(proc)
        print(f"get_studies_p99_ms {p99:.1f}")


def measure(
    url: str, method: str, path: str, requests: int, clients: int, body: dict | None = None
) -> tuple[list[float], float]:
    """Latencies of a timed run after a short warm-up, and the run's wall time."""
    asyncio.run(load(url, method, path, clients, clients, body))
    started = time.perf_counter()
    latencies = asyncio.run(load(url, method, path, requests, clients, body))
    return latencies, time.perf_counter() - started


def outbox_lag(db_url: str, timeout_s: float = 600) -> float:
    """Seconds until no study waits for its MLflow records (the server's outbox drained)."""
    engine = make_engine(db_url)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout_s:
            with engine.connect() as conn:
                if not conn.execute(select(func.count()).where(Study.mlflow_pending.is_(True))).scalar_one():
                    return time.perf_counter() - started
            time.sleep(0.2)
        raise RuntimeError(f"the MLflow outbox did not drain in {timeout_s:.0f} s")
    finally:
        engine.dispose()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


if __name__ == "__main__":
    main()
