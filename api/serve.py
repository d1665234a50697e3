"""``krpo-bench serve`` (the API, optionally with embedded workers) and ``krpo-bench token``.

Kept import-light: the CLI imports this module on every start; FastAPI, uvicorn and the service are
imported when a command runs.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import subprocess
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from krpo_bench.api.auth import TokenStore

    from krpo_bench.service.studies import StudyService

WORKER_STOP_TIMEOUT_S = 120


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, has_tokens: bool) -> str | None:
    """Why binding ``host`` is refused (a public address without tokens), else None."""
    if has_tokens or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host!r} without API tokens: anyone who can reach it could submit studies; "
        "create one with 'krpo-bench token create NAME --scope admin' or bind 127.0.0.1"
    )


def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on (a public one needs API tokens)"),
    port: int = typer.Option(8000, help="port to listen on"),
    workers: int = typer.Option(0, help="embedded worker processes to run beside the API (0: none)"),
    db: Optional[str] = typer.Option(
        None, "--db", help="job database URL (default: the db setting, see 'krpo-bench config')"
    ),
    mlflow: Optional[str] = typer.Option(
        None, "--mlflow", help="MLflow tracking URI (default: the mlflow_tracking_uri setting)"
    ),
) -> None:
    """Run the REST API (docs at /docs, read-only Optuna dashboard at /optuna)."""
    from krpo_bench.api.auth import TokenStore
    from krpo_bench.api.settings import ApiSettings

    settings = ApiSettings.from_settings(db=db, mlflow_tracking_uri=mlflow)
    refusal = bind_refusal(host, bool(TokenStore(settings.api_tokens_file).records()))
    if refusal:
        typer.echo(f"error: {refusal}", err=True)
        raise typer.Exit(2)

    import uvicorn
    from krpo_bench.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; exit cleanly instead of dying,
    # so the embedded workers below are always stopped too.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    app = create_app(settings)
    procs = _start_workers(app.state.service, workers) if workers > 0 else []
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        _stop_workers(procs)


def _exit_cleanly(*_: object) -> None:
    raise SystemExit(0)


def _start_workers(service: StudyService, count: int) -> list[subprocess.Popen]:
    """``count`` ``krpo-bench worker`` processes on the server's database and MLflow store."""
    from krpo_bench.service.local import local_worker_commands

    return [subprocess.Popen(cmd, env=env) for cmd, env in local_worker_commands(service, count)]


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (running trials checkpoint and requeue), then wait; kill what does not exit."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()


token_app = typer.Typer(help="API bearer tokens (the server keeps only their SHA-256).", no_args_is_help=True)


def _store() -> TokenStore:
    from krpo_bench.api.auth import TokenStore

    from krpo_bench.settings import get_settings

    return TokenStore(get_settings().api_tokens_file)


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="who or what uses the token"),
    scope: list[str] = typer.Option(
        ["read"], "--scope", help="read | submit | admin (repeatable; admin > submit > read)"
    ),
) -> None:
    """Create a token and print it once (it cannot be shown again)."""
    try:
        token, record = _store().create(name, scope)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"created token {record.id} ({name}, scopes {', '.join(record.scopes)}); store it now:", err=True)
    typer.echo(token)


@token_app.command("list")
def token_list() -> None:
    """List tokens (id, name, scopes, creation time; never the token)."""
    for record in _store().records():
        typer.echo(f"{record.id}  {record.name}  {','.join(record.scopes)}  {record.created_at}")


@token_app.command("revoke")
def token_revoke(id_or_name: str = typer.Argument(..., help="token id or name")) -> None:
    """Revoke tokens by id or name (a running server notices at the next request)."""
    removed = _store().revoke(id_or_name)
    if not removed:
        typer.echo(f"error: no token {id_or_name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {removed} token(s)")
