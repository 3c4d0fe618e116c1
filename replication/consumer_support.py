"""What every DataGate websocket consumer shares with the Channels machinery."""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name


class DirectDispatchMixin:
    """Dispatch each ASGI message straight to its handler, without Channels' thread hop.

    Channels' `dispatch` hops to a thread to run `close_old_connections` before every message:
    about 40% of the CPU of a busy consumer (STYLE.md, measured here). We skip it on purpose:
    every ORM call in our consumers goes through `database_sync_to_async`, which closes stale
    connections in its own thread before and after each call, so nothing relies on the hop.
    A consumer that calls the ORM any other way must not use this mixin.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)
