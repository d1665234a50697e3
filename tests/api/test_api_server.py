"""A real ``krpo-bench serve`` process on loopback: the client and ``krpo-bench submit --api`` over
HTTP with a token, clean shutdown on SIGTERM, and embedded workers started and stopped with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from krpo_bench.api.auth import TokenStore

from krpo_bench.client import ApiError, Client
from tests.api.test_api import SPEC


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(home: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, KRPO_BENCH_HOME=str(home), KRPO_BENCH_API_TOKENS_FILE=str(home / "tokens.json"))
    cmd = [
        sys.executable,
        "-m",
        "krpo_bench.cli",
        "serve",
        "--port",
        str(port),
        "--db",
        f"sqlite:///{home / 'jobs.db'}",
        "--mlflow",
        f"sqlite:///{home / 'mlflow.db'}",
        *args,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"server did not start:\n{proc.communicate()[0]}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    home = tmp_path_factory.mktemp("server")
    token, _ = TokenStore(home / "tokens.json").create("tests", ["admin"])
    proc, url = start(home)
    yield url, token, home
    output = stop(proc)
    assert "Traceback" not in output, output


def test_client_against_a_real_server(server: tuple[str, str, Path]) -> None:
    url, token, _ = server
    client = Client(url, token)
    study = client.submit(SPEC, idempotency_key="real-1")
    assert client.submit(SPEC, idempotency_key="real-1")["id"] == study["id"]
    assert client.get_study(study["id"])["counts"]["queued"] == 4
    assert client.list_studies()["items"][0]["id"] == study["id"]
    with pytest.raises(ApiError) as err:
        Client(url, "kb_wrong").list_studies()
    assert err.value.status == 401


def test_cli_submit_through_the_api(server: tuple[str, str, Path], tmp_path: Path) -> None:
    url, token, home = server
    file = tmp_path / "study.yaml"
    file.write_text(yaml.safe_dump({**SPEC, "name": "from-cli"}))
    env = dict(os.environ, KRPO_BENCH_HOME=str(home), KRPO_BENCH_API_TOKEN=token)
    result = subprocess.run(
        [sys.executable, "-m", "krpo_bench.cli", "submit", str(file), "--api", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "from-cli"' in result.stdout
    assert Client(url, token).list_studies()["items"][0]["name"] == "from-cli"


def test_embedded_workers_start_and_stop_with_the_server(tmp_path: Path) -> None:
    proc, url = start(tmp_path, "--workers", "1")
    deadline = time.monotonic() + 90
    workers: list[dict] = []
    while time.monotonic() < deadline and not workers:
        workers = httpx.get(f"{url}/api/v1/workers").json()["items"]
        time.sleep(0.5)
    assert [w["status"] for w in workers] == ["active"], workers
    stop(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # SIGTERM reached the worker: it deregistered and exited
        try:
            os.kill(workers[0]["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the embedded worker outlived the server")
    from krpo_bench.service.db import make_engine
    from krpo_bench.service.transactions import Transactions
    from krpo_bench.service.worker_registry import WorkerRegistry

    registry = WorkerRegistry(Transactions(make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")))
    assert [w.status for w in registry.list()] == ["stopped"]
