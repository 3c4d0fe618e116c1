"""What every DataGate websocket consumer shares with the Channels machinery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer


class DirectDispatchMixin:
    """Dispatch each ASGI message straight to its handler, with no per-message overhead.

    Channels' `dispatch` hops to a thread to run `close_old_connections` before every message:
    about 40% of the CPU of a busy consumer (STYLE.md, measured here). We skip it on purpose:
    every ORM call in our consumers goes through `database_sync_to_async`, which closes stale
    connections in its own thread before and after each call, so nothing relies on the hop.
    A consumer that calls the ORM any other way must not use this mixin.

    Our consumers have no channel-layer channel of their own (live feeds come through the
    process's hub), so they need not wait on two sources: `__call__` awaits the socket's
    messages in a plain loop instead of Channels' `await_many_dispatch`, which creates a task
    and runs `asyncio.wait` for every message (every live feed.ack, bench/RESULTS.md).
    """

    channel_layer_alias: str
    channel_layer: Any

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if get_channel_layer(self.channel_layer_alias) is not None:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
            return
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)
