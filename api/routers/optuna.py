"""optuna-dashboard, read-only, mounted under a prefix (``/optuna``) of the API.

A small WSGI -> ASGI bridge for GET/HEAD only (other methods get 405, so nothing can be changed),
with the API's bearer-token check (scope ``read``). The dashboard's single-page app assumes it is
served at the root; its HTML and bundle are rewritten to the mount prefix (checked by the tests).
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from krpo_bench.api.auth import Authenticator, AuthError, bearer_token
from krpo_bench.api.routers import error_response
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

READ_METHODS = ("GET", "HEAD")


def rewrite_for_prefix(body: bytes, prefix: str) -> bytes:
    """The dashboard's HTML/JS with its root-absolute URLs (assets, API, client routes) under ``prefix``."""
    p = prefix.encode()
    for old, new in (
        (b'src="/static/', b'src="' + p + b"/static/"),
        (b'url_prefix:"/dashboard"', b'url_prefix:"' + p + b'/dashboard"'),
        (b'(null!=e?e:"")}handleResponse', b'(null!=e?e:"' + p + b'")}handleResponse'),
    ):
        body = body.replace(old, new)
    return body


def _relocate(location: str, prefix: str) -> str:
    """A redirect as a path under the mount ``prefix``: scheme and host are dropped (the dashboard
    builds them from ``Host``/``X-Forwarded-Host``, which the client controls)."""
    parts = urlsplit(location)
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    if not path.startswith(prefix + "/"):
        path = prefix + path
    return urlunsplit(("", "", path, parts.query, parts.fragment))


class DashboardMissing(RuntimeError):
    """optuna-dashboard is not installed here."""


class ReadOnlyOptunaDashboard:
    """An ASGI app serving ``optuna_dashboard.wsgi(storage)`` read-only where it is mounted."""

    def __init__(self, db_url: str, auth: Authenticator) -> None:
        self.db_url = db_url
        self.auth = auth
        self._wsgi: Callable[..., Any] | None = None
        self._lock = threading.Lock()

    def wsgi(self) -> Callable[..., Any]:
        """The dashboard's WSGI app, built on first use (it opens the Optuna storage)."""
        with self._lock:
            if self._wsgi is None:
                try:
                    import optuna_dashboard
                except ImportError:
                    raise DashboardMissing(
                        "the Optuna dashboard is not available on this server: "
                        "install the 'optuna-dashboard' package (krpo-bench[api])"
                    ) from None

                from krpo_bench.service.optuna_store import optuna_storage

                self._wsgi = optuna_dashboard.wsgi(optuna_storage(self.db_url))
            return self._wsgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] not in READ_METHODS:
            response = error_response(
                405, "the Optuna dashboard is read-only here", headers={"Allow": ", ".join(READ_METHODS)}
            )
            await response(scope, receive, send)
            return
        try:
            peer = (scope.get("client") or (None, None))[0]
            self.auth.check(bearer_token(headers.get("authorization")), "read", headers.get("host", ""), peer)
        except AuthError as exc:
            await error_response(exc.status, exc.message, headers=exc.headers)(scope, receive, send)
            return
        root = scope.get("root_path", "")
        try:
            status, wsgi_headers, body = await run_in_threadpool(self._call, self._environ(scope, headers, root))
        except DashboardMissing as exc:
            await error_response(503, str(exc))(scope, receive, send)
            return
        raw = []
        for name, value in wsgi_headers:
            lowered = name.lower()
            if lowered == "content-type" and value.startswith(
                ("text/html", "application/javascript", "text/javascript")
            ):
                body = rewrite_for_prefix(body, root)
            if lowered != "content-length":
                raw.append(
                    (
                        lowered.encode("latin-1"),
                        (_relocate(value, root) if lowered == "location" else value).encode("latin-1"),
                    )
                )
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def _environ(self, scope: Scope, headers: dict[str, str], root: str) -> dict[str, Any]:
        path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        server = scope.get("server") or ("localhost", 80)
        environ = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": root,
            "PATH_INFO": path or "/",
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": server[0],
            "SERVER_PORT": str(server[1]),
            "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers.items():
            if name not in ("content-type", "content-length", "authorization", "host") and not name.startswith(
                "x-forwarded-"
            ):
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        environ["HTTP_ACCEPT_ENCODING"] = "identity"  # bodies are rewritten, so never gzipped
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [int(status.split(" ", 1)[0]), headers]

        chunks = self.wsgi()(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        return started[0], started[1], body
