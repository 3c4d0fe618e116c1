"""Live `_changes` feeds (longpoll, continuous, eventsource) on the process's one live hub.

A waiting feed does not poll the database. It joins the collection's `CollectionFeed` in
`replication.live.LiveHub` like a websocket replica: the hub hears the doorbell (or its own
periodic check, `LIVE_POLL_INTERVAL`, if a bell is lost), reads the new changes once for every
local session, and offers the block. The feed only takes the offer as its wake-up call and
then reads its own page, filtered by what its user may read (docs/decisions/0002).
"""

from __future__ import annotations

import asyncio

from replication.live import FeedBlock, LiveHub, get_hub


class FeedWaiter:
    """A `LiveSession` that sends nothing itself: an offer past `position` wakes it."""

    def __init__(self, collection_id: int, position: int) -> None:
        self.collection_id = collection_id
        self.position = position
        self.woken = asyncio.Event()
        self.hub: LiveHub | None = None

    async def offer(self, block: FeedBlock) -> bool:
        if block.end > self.position:
            self.woken.set()
        return False  # no shared bytes sent: the hub waits for no ack from here

    def tick(self, now: float) -> None:
        return None

    async def shut_down(self, retry_after_ms: int | None = None) -> None:
        self.woken.set()

    async def disconnect_requested(self) -> None:
        return None

    async def join(self) -> bool:
        """Join the hub; True when the hub already offered past `position` (read again now)."""
        self.hub = get_hub()
        self.hub.register(self)
        offered = await self.hub.join(
            self, collection_id=self.collection_id, from_seq=self.position
        )
        return offered > self.position

    async def leave(self) -> None:
        if self.hub is not None:
            await self.hub.leave(self, collection_id=self.collection_id)
            self.hub.unregister(self)
            self.hub = None

    def moved(self, position: int) -> None:
        """The feed has read up to `position`: wait for what comes after it."""
        self.position = position
        self.woken.clear()
