"""Bearer tokens with scopes, stored hashed in a JSON file; the FastAPI dependency that checks them.

A token is ``kb_<random>``; the file keeps only its SHA-256 (tokens are 256-bit random, so a fast
hash is enough), its id, name and scopes. Scopes nest: ``admin`` includes ``submit``, which includes
``read``. The server needs tokens as soon as the file holds one (it is re-read when it changes, so
creating the first token closes a running server too); without any it serves anonymous requests,
``serve`` refuses to bind anywhere but loopback, and only requests from a loopback address whose
``Host`` is a loopback name or address are answered (a web page cannot reach it through DNS
rebinding; a public bind whose tokens were all revoked answers nobody else). A study is owned by the
token that submitted it: a submit token may cancel, resume and extend its own studies, an admin token
anyone's.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "submit", "admin")
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "submit": frozenset({"read", "submit"}),
    "admin": frozenset({"read", "submit", "admin"}),
}
TOKEN_PREFIX = "kb_"


class AuthError(Exception):
    """A request without a valid token (401) or without the scope it needs (403)."""

    def __init__(self, status: int, message: str, scope: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        error = "invalid_token" if status == 401 else "insufficient_scope"
        self.headers = {"WWW-Authenticate": f'Bearer error="{error}", scope="{scope}"'}


@dataclass(frozen=True)
class TokenRecord:
    """One stored token: never the token itself, only its hash."""

    id: str
    name: str
    scopes: list[str]
    sha256: str
    created_at: str

    def grants(self, scope: str) -> bool:
        return any(scope in GRANTS[s] for s in self.scopes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The token file (mode 0600, rewritten atomically, re-read when it changes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._by_hash: dict[str, TokenRecord] = {}

    def records(self) -> list[TokenRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [TokenRecord(**r) for r in data.get("tokens", [])]

    def _write(self, records: list[TokenRecord]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"tokens": [asdict(r) for r in records]}, handle, indent=2)
        os.replace(tmp, self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def create(self, name: str, scopes: list[str]) -> tuple[str, TokenRecord]:
        """A new token (returned once, in clear) and its stored record."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {scopes}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            id=secrets.token_hex(4),
            name=name,
            scopes=sorted(set(scopes), key=SCOPES.index),
            sha256=hash_token(token),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._locked():
            self._write([*self.records(), record])
        return token, record

    def revoke(self, id_or_name: str) -> int:
        """Remove tokens by id or name; returns how many."""
        with self._locked():
            records = self.records()
            kept = [r for r in records if id_or_name not in (r.id, r.name)]
            if len(kept) != len(records):
                self._write(kept)
        return len(records) - len(kept)

    def _current(self) -> dict[str, TokenRecord]:
        """The records by hash, re-reading the file if it changed since the last call."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._by_hash = {r.sha256: r for r in self.records()}
            self._stamp = stamp
        return self._by_hash

    def lookup(self, token: str) -> TokenRecord | None:
        """The record of ``token`` (as the file holds it now)."""
        return self._current().get(hash_token(token))

    def has_tokens(self) -> bool:
        """Whether the file holds at least one token now."""
        return bool(self._current())


def is_loopback_peer(address: str | None) -> bool:
    """Whether a client address is loopback; an address that is no IP (a Unix socket, an in-process
    test client) counts as local."""
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return True


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (``localhost``, ``127.0.0.1``, ``[::1]``,
    with or without a port)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Checks a request's bearer token for a scope; without tokens, checks that the request was
    addressed to a loopback name instead."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    @property
    def required(self) -> bool:
        """Whether requests need a token: the token file holds one (now, not at start-up)."""
        return self.store.has_tokens()

    def check(self, token: str | None, scope: str, host: str, peer: str | None = None) -> TokenRecord | None:
        """The token's record if it grants ``scope`` (None on a server without tokens, for a
        request from a loopback ``peer`` whose ``host`` header is a loopback name: a server bound
        publicly whose tokens were all revoked stays closed); raises AuthError otherwise."""
        if not self.required:
            if not (is_loopback_host(host) and is_loopback_peer(peer)):
                raise AuthError(
                    403,
                    "this server has no API tokens and only answers requests addressed to a "
                    "loopback name (Host: localhost or 127.0.0.1); create a token to serve other names",
                    scope,
                )
            return None
        if not token:
            raise AuthError(401, "a bearer token is required (Authorization: Bearer <token>)", scope)
        record = self.store.lookup(token)
        if record is None:
            raise AuthError(401, "unknown or revoked token", scope)
        if not record.grants(scope):
            raise AuthError(403, f"this token lacks the '{scope}' scope", scope)
        return record


def may_control(token: TokenRecord | None, owner: str | None) -> bool:
    """Whether a request with ``token`` may cancel, resume or extend a study whose owner is
    ``owner`` (the id of the token that submitted it): an admin token any study, a submit token only
    its own; on a server without tokens (``token`` None) every admitted request."""
    if token is None:
        return True
    return token.grants("admin") or (token.grants("submit") and owner == token.id)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    kind, _, token = (authorization or "").partition(" ")
    return token.strip() or None if kind.lower() == "bearer" else None


_bearer = HTTPBearer(
    auto_error=False, description="a token from `krpo-bench token create`; scopes: read < submit < admin"
)


def require(scope: Scope) -> Callable[..., TokenRecord | None]:
    """A dependency admitting requests whose token grants ``scope``."""

    async def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> TokenRecord | None:
        token = credentials.credentials if credentials else None
        peer = request.client.host if request.client else None
        return request.app.state.auth.check(token, scope, request.headers.get("host", ""), peer)

    return dependency
