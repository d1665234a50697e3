"""CPU time of one study submission through the API's request path, split into its steps.

Builds a real app (``create_app``) on a job database in a temporary folder (SQLite) or in a fresh
PostgreSQL database it creates and drops (``--db postgresql``), and submits the same spec N times by
calling the route's steps directly (no HTTP, no server, no MLflow: the outbox is left pending):
admit (parse, validate, policy, default timeout), submit (``StudyService.submit``: store the study
and its jobs) and detail (the rest of the route's ``_submit``: the quota turn, the detail answered),
each timed with ``time.process_time`` (this process's CPU, whatever else loads the machine; the
PostgreSQL server's own CPU is not counted). Also the detail a ``GET /studies/{id}`` answers
(``_detail``). Measured for the one-trial study
``benchmarks.api`` posts and for a 4-variant x 2-seed ablation of the same base. The last line is
the total CPU ms per small submission:
``python -m benchmarks.submit_cpu [--n 300] [--db sqlite|postgresql] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from krpo_bench.api.app import create_app
from krpo_bench.api.routers.studies import _admit, _detail, _submit
from krpo_bench.api.settings import ApiSettings
from sqlalchemy.engine import make_url

from benchmarks.api import BASE, SMALL_SPEC
from krpo_bench.service.optuna_store import dispose_optuna_storage
from krpo_bench.service.quotas import with_default_timeout

PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
ABLATION_SPEC = {
    "name": "bench-ablation",
    "kind": "ablation",
    "seeds": 2,
    "base": BASE,
    "variants": {name: {"estimator": {"name": name}} for name in ("grpo", "krpo", "rloo", "dr_grpo")},
}
STEPS = ("admit", "submit", "detail")
T = TypeVar("T")


@contextlib.contextmanager
def job_database(kind: str, folder: Path) -> Iterator[str]:
    """URL of an empty job database: a SQLite file in ``folder``, or a PostgreSQL database created
    beside ``PG_URL``'s and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'jobs.db'}"
        return
    admin = make_url(PG_URL)
    name = f"krpo_submit_cpu_{uuid.uuid4().hex[:12]}"
    connect = dict(host=admin.host, port=admin.port, user=admin.username, dbname=admin.database, autocommit=True)
    with psycopg.connect(**connect) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_optuna_storage(url)
        with psycopg.connect(**connect) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(cpu: dict[str, float], step: str, fn: Callable[[], T]) -> T:
    """``fn()``, its CPU seconds added to ``cpu[step]``."""
    started = time.process_time()
    result = fn()
    cpu[step] = cpu.get(step, 0.0) + time.process_time() - started
    return result


def submissions(state: Any, spec: dict[str, Any], n: int) -> dict[str, float]:
    """CPU ms per submission of ``spec`` by step (and ``get``: the detail ``GET`` answers), over ``n``:
    admit is the route's parsing and checks, submit ``StudyService.submit``, detail the rest of the
    route's ``_submit`` (the quota turn, the detail read and built)."""
    body = json.dumps(spec).encode()
    service, policy, quotas = state.service, state.policy, state.quotas
    timeout_s = state.settings.default_timeout_s
    cpu: dict[str, float] = {}
    store = service.submit
    service.submit = lambda *args, **kwargs: timed(cpu, "submit", lambda: store(*args, **kwargs))
    try:
        for _ in range(n):
            study = timed(
                cpu,
                "admit",
                lambda: with_default_timeout(_admit(body, "application/json", policy, service), timeout_s),
            )
            detail = timed(cpu, "detail", lambda: _submit(service, study, None, None, quotas))
            timed(cpu, "get", lambda: _detail(service, detail.id))
    finally:
        del service.submit
    cpu["detail"] -= cpu["submit"]
    return {step: seconds * 1000 / n for step, seconds in cpu.items()}


def report(label: str, ms: dict[str, float]) -> float:
    """Print one line of CPU ms per submission; returns the total (admit + submit + detail)."""
    total = sum(ms[step] for step in STEPS)
    steps = "  ".join(f"{step} {ms[step]:5.2f}" for step in STEPS)
    print(f"{label:28s} {steps}  total {total:5.2f} ms CPU   (GET detail {ms['get']:5.2f})")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="submissions of each spec")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the small submissions here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="krpo-submit-cpu-") as tmp, job_database(args.db, Path(tmp)) as db:
        folder = Path(tmp)
        settings = ApiSettings(
            db=db,
            mlflow_tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
            api_tokens_file=folder / "no-tokens.json",
            data_roots=(folder,),
        )
        app = create_app(settings)
        try:
            submissions(app.state, SMALL_SPEC, 20)  # warm-up: imports, compiled statements, pools
            submissions(app.state, ABLATION_SPEC, 5)
            small = submissions(app.state, SMALL_SPEC, args.n)
            report(f"{args.db}: 4x2 ablation", submissions(app.state, ABLATION_SPEC, max(1, args.n // 4)))
            total = report(f"{args.db}: one-trial study", small)
            if args.profile:
                profiler = cProfile.Profile(time.process_time)
                profiler.runcall(submissions, app.state, SMALL_SPEC, args.n)
                profiler.dump_stats(args.profile)
        finally:
            app.state.service.engine.dispose()
        print(f"submit_cpu_ms_per_small_submission {total:.2f}")


if __name__ == "__main__":
    main()
