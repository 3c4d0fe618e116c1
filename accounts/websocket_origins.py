"""The websocket Origin check: browsers may open sockets only from allowed origins.

A browser always sends `Origin`, so a page on another site cannot open a socket to DataGate
with the user's cookies or tokens (cross-site websocket hijacking). Native replicas and
services send no `Origin`; they prove who they are with their token, so a missing Origin is
let through.

Allowed origins: `DATAGATE_ALLOWED_ORIGINS` (comma-separated, Channels patterns:
`example.com`, `.example.com` for subdomains, `https://example.com:8443`, `*`). When it is
empty (the default), only the server's own origin: the Origin's host and port must be the
request's `Host` header's (the page was served by this server). Behind a proxy that rewrites
`Host`, list the public origins in `DATAGATE_ALLOWED_ORIGINS`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult, urlparse

from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def allowed_origins() -> list[str]:
    """The configured origins; empty means "the server's own origin only"."""
    configured = [o.strip() for o in str(settings.DATAGATE["ALLOWED_ORIGINS"]).split(",")]
    return [o for o in configured if o]


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of `host[:port]` (IPv6 in brackets), the scheme's port when none."""
    try:
        parsed = urlparse(f"//{netloc}")
        port = parsed.port
    except ValueError:
        return None
    if not parsed.hostname:
        return None
    return parsed.hostname.lower(), port or DEFAULT_PORTS.get(scheme, 80)


def same_origin(origin: ParseResult, host_header: str | None) -> bool:
    """Whether a browser's Origin names the host (and port) the request was sent to."""
    if host_header is None or origin.scheme not in DEFAULT_PORTS:
        return False
    return _host_port(origin.netloc, origin.scheme) == _host_port(host_header, origin.scheme)


class WebsocketOriginCheck(OriginValidator):
    """Channels' OriginValidator, except that a socket without Origin is not a browser's and
    that, with no origins configured, the allowed origin is the server's own."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("WebsocketOriginCheck is for websocket connections")
        origin: ParseResult | None = None
        host: str | None = None
        undecodable = False
        for name, value in scope.get("headers", []):
            try:
                if name == b"origin":
                    origin = urlparse(value.decode("latin1"))
                elif name == b"host":
                    host = value.decode("latin1")
            except ValueError:
                undecodable = True
        if not undecodable and self.origin_allowed(origin, host):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    def origin_allowed(self, origin: ParseResult | None, host: str | None) -> bool:
        if origin is None:
            return True
        if not self.allowed_origins:
            return same_origin(origin, host)
        return bool(self.validate_origin(origin))

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        """Channels' hook, for the configured origins (no Host header to compare with)."""
        if parsed_origin is None:
            return True
        return bool(self.allowed_origins) and bool(self.validate_origin(parsed_origin))
