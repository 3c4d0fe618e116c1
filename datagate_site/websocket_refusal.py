"""Websockets on a path no route serves get a clean refusal, not a traceback.

Channels' URLRouter raises `ValueError: No route found for path ...` for an unknown path;
daphne then logs the traceback and answers the handshake with HTTP 500. `NOT_FOUND_ROUTE`,
the last route of the project's websocket router, matches every path the others did not and
closes the socket before accepting it: daphne answers the handshake with HTTP 403 (the ASGI
rule for a close before accept), and logs the rejection as any other, without a traceback.
"""

from __future__ import annotations

from typing import Any, cast

from django.urls import re_path


async def websocket_not_found(scope: Any, receive: Any, send: Any) -> None:
    """Refuse the socket: a close before accept is an HTTP 403 to the handshake."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1000})


# URLRouter takes any ASGI application as a route (django-stubs expects a view).
NOT_FOUND_ROUTE = re_path(r"", cast(Any, websocket_not_found))
