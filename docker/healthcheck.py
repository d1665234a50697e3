"""Container health checks for docker-compose.yml (the slim image has no curl).

python docker/healthcheck.py http URL        exit 0 when GET URL answers 2xx/3xx within 5 s
python docker/healthcheck.py worker [AGE_S]  exit 0 when a worker on this host (container) is
                                             registered active in KRPO_BENCH_DB and heartbeated
                                             within AGE_S seconds (default 120)
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from datetime import UTC, datetime, timedelta


def http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own fixed URLs
            return 0 if response.status < 400 else 1
    except Exception as exc:  # connection refused, timeout, HTTP error: unhealthy
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def worker(max_age_s: float) -> int:
    from krpo_bench.service.db import make_engine
    from krpo_bench.service.transactions import Transactions
    from krpo_bench.service.worker_registry import WorkerRegistry
    from krpo_bench.settings import default_db_url

    engine = make_engine(default_db_url())
    try:
        mine = [
            w
            for w in WorkerRegistry(Transactions(engine)).list()
            if w.hostname == socket.gethostname() and w.status.value == "active"
        ]
    finally:
        engine.dispose()
    cutoff = datetime.now(UTC) - timedelta(seconds=max_age_s)
    fresh = [
        w for w in mine if (w.heartbeat_at if w.heartbeat_at.tzinfo else w.heartbeat_at.replace(tzinfo=UTC)) >= cutoff
    ]
    if not fresh:
        print(f"no active worker on {socket.gethostname()} heartbeated in the last {max_age_s:.0f} s", file=sys.stderr)
    return 0 if fresh else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "http":
        return http(argv[1])
    if argv and argv[0] == "worker":
        return worker(float(argv[1]) if len(argv) > 1 else 120.0)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
