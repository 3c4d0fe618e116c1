"""The websocket Origin check: browsers may open sockets only from allowed origins.

A browser always sends `Origin`, so a page on another site cannot open a socket to DataGate
with the user's cookies or tokens (cross-site websocket hijacking). Native replicas and
services send no `Origin`; they prove who they are with their token, so a missing Origin is
let through. Allowed origins: `DATAGATE_ALLOWED_ORIGINS` (comma-separated, Channels patterns:
`example.com`, `.example.com` for subdomains, `https://example.com:8443`, `*`), or the
allowed hosts when it is empty.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings


def allowed_origins() -> list[str]:
    configured = [o.strip() for o in str(settings.DATAGATE["ALLOWED_ORIGINS"]).split(",")]
    return [o for o in configured if o] or list(settings.ALLOWED_HOSTS)


class WebsocketOriginCheck(OriginValidator):
    """Channels' OriginValidator, except that a socket without Origin is not a browser's."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, allowed_origins())

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))
