"""Cross-site requests refused: a web page on another origin cannot change anything on this server.

A browser attaches ``Origin`` (and ``Sec-Fetch-Site``) to the requests a page sends, and lets any page
send "simple" requests (a form's POST, a ``fetch`` without custom headers) to any address, the
operator's own loopback server included, without asking it first. So every state-changing request
(POST, PUT, PATCH, DELETE, ...) is refused with a 403 when its ``Origin`` is not this server's own
(scheme aside: host and port, as the request's ``Host`` names them) or is ``null`` (a sandboxed page,
a file), or when ``Sec-Fetch-Site`` says ``cross-site`` or ``same-site``; and with a 415 when it
carries a form or plain-text body, the content types a page may send without a preflight. Clients
that send neither header and a JSON body or none (the CLI, scripts) pass, and so do the server's own
pages; reads (GET, HEAD, OPTIONS) are never refused here. Token-less or not.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from krpo_bench.api.routers import error_response
from starlette.types import ASGIApp, Receive, Scope, Send

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})
SIMPLE_BODY_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
"""The content types a page may send to any origin without a CORS preflight."""
DEFAULT_PORTS = {"http": 80, "https": 443}
ECHO_CHARS = 64


def _shown(value: str) -> str:
    return repr(value if len(value) <= ECHO_CHARS else f"{value[:ECHO_CHARS]}... ({len(value)} characters)")


def _host_and_port(authority: str, scheme: str) -> tuple[str, int | None] | None:
    """(host, port) of ``host[:port]``, the port defaulting to the scheme's; None when malformed."""
    try:
        parts = urlsplit(f"//{authority.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname.rstrip("."), port or DEFAULT_PORTS.get(scheme)


def cross_site_refusal(method: str, host: str, origin: str | None, fetch_site: str | None) -> str | None:
    """Why a request (its method and headers) is refused as sent by another site's page, or None."""
    if method.upper() in READ_METHODS:
        return None
    if origin is not None:
        parsed = urlsplit(origin.strip())
        scheme = parsed.scheme.lower()
        theirs = (
            _host_and_port(parsed.netloc, scheme) if scheme in DEFAULT_PORTS and not parsed.path.strip("/") else None
        )
        if theirs is None or theirs != _host_and_port(host, scheme):
            return f"Origin {_shown(origin)} is not this server's origin (Host {_shown(host)})"
    if (fetch_site or "").strip().lower() in FOREIGN_FETCH_SITES:
        return f"Sec-Fetch-Site {_shown(fetch_site or '')}: the request comes from a page of another site"
    return None


def simple_body_refusal(method: str, content_type: str | None) -> str | None:
    """Why a state-changing request's body type is refused (one a page of any site may send), or None."""
    media = (content_type or "").split(";")[0].strip().lower()
    if method.upper() in READ_METHODS or media not in SIMPLE_BODY_TYPES:
        return None
    return (
        f"a request that changes anything may not carry a form or plain-text body (Content-Type {_shown(media)}), "
        "which a page of any site can send; send application/json (or a study spec as application/yaml)"
    )


class CrossSiteGuard:
    """Middleware answering a JSON 403 (``cross_site_request``) to every request :func:`cross_site_refusal`
    refuses, and a 415 to every one :func:`simple_body_refusal` refuses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
            method = scope["method"]
            reason = cross_site_refusal(
                method, headers.get(b"host", ""), headers.get(b"origin"), headers.get(b"sec-fetch-site")
            )
            if reason is not None:
                message = (
                    f"cross-site request refused: {reason}. Requests that change anything are answered only from "
                    "this server's own pages or from clients that send no Origin (the CLI, scripts)"
                )
                await error_response(403, message, code="cross_site_request")(scope, receive, send)
                return
            body_type = simple_body_refusal(method, headers.get(b"content-type"))
            if body_type is not None:
                await error_response(415, body_type)(scope, receive, send)
                return
        await self.app(scope, receive, send)
