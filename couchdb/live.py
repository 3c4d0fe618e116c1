"""Live `_changes` feeds (longpoll, continuous, eventsource) on the process's one live hub.

A waiting feed does not poll the database. Each collection with CouchDB feeds in this process
has one `CollectionTail`, a session of `replication.live.LiveFeeds` (on the process hub,
`core.hub`) like a websocket replica: the hub hears the doorbell (or polls every
`LIVE_POLL_INTERVAL`, if a bell is lost), reads the new changes once for every local session,
and offers the block. The tail keeps the last blocks and wakes the feeds waiting on it
(docs/decisions/0002).

The kept blocks also answer the next request of a live PouchDB, which comes back right after
each answer with the `since` it was given: if the tail covers it, the page is built from the
blocks and the view cache (couchdb/cache.py) without a database step; if nothing is new, the
request waits on the tail at once. Anything the tail does not cover is read from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque

from core.hub import process_hub
from replication.live import FeedBlock, LiveFeeds, live_feeds

# The tail keeps at most this many changes of recent blocks.
TAIL_CHANGES = 5_000
# A tail with no feed for this long leaves the hub.
TAIL_IDLE_SECONDS = 60.0


class FeedWaiter:
    """One waiting feed: an offer past `position` wakes it, with the blocks it missed."""

    def __init__(self, collection_id: int, position: int) -> None:
        self.collection_id = collection_id
        self.position = position
        self.woken = asyncio.Event()
        self.tail: CollectionTail | None = None
        # The blocks offered since the feed last read: often all it needs to answer.
        self.blocks: list[FeedBlock] = []

    def offered(self, block: FeedBlock) -> None:
        if block.end > self.position:
            self.blocks.append(block)
            self.woken.set()

    async def join(self, epoch: int) -> bool:
        """Wait on the collection's tail; True when it is already past `position` (with the
        blocks that cover the gap, if it has them: read again now)."""
        self.tail = await tail_for(self.collection_id, self.position, epoch)
        self.tail.waiters.add(self)
        if self.tail.position is not None and self.tail.position > self.position:
            self.blocks.extend(b for b in self.tail.blocks if b.end > self.position)
            return True
        return False

    async def leave(self) -> None:
        if self.tail is not None:
            self.tail.waiters.discard(self)
            self.tail.last_used = time.monotonic()
            self.tail = None

    def moved(self, position: int) -> None:
        """The feed has read up to `position`: wait for what comes after it."""
        self.position = position
        self.blocks = [b for b in self.blocks if b.end > position]
        self.woken.clear()


class CollectionTail:
    """The hub's session for one collection's CouchDB feeds in this process."""

    def __init__(self, collection_id: int) -> None:
        self.collection_id = collection_id
        self.position: int | None = None
        self.epoch = 0
        self.blocks: deque[FeedBlock] = deque()
        self.kept = 0
        self.waiters: set[FeedWaiter] = set()
        self.last_used = time.monotonic()
        self.feeds: LiveFeeds | None = None
        self.retiring = False
        self._retiring: asyncio.Future[None] | None = None

    async def offer(self, block: FeedBlock) -> bool:
        if self.position is not None and block.start > self.position:
            # A gap (it should not happen: the hub offers in order): forget what is kept.
            self.blocks.clear()
            self.kept = 0
        self.blocks.append(block)
        self.epoch = block.epoch
        self.kept += len(block.changes)
        while self.kept > TAIL_CHANGES and len(self.blocks) > 1:
            self.kept -= len(self.blocks.popleft().changes)
        self.position = block.end if self.position is None else max(self.position, block.end)
        for waiter in list(self.waiters):
            waiter.offered(block)
        return False  # no shared bytes sent: the hub waits for no ack from here

    def covering(self, since: int) -> list[FeedBlock] | None:
        """The kept blocks after `since` when they cover everything up to the tail's position
        ([] when nothing is new); None when the tail cannot tell."""
        if self.position is None or since > self.position:
            return None
        if since == self.position:
            return []
        if not self.blocks or self.blocks[0].start > since:
            return None
        self.last_used = time.monotonic()
        return [b for b in self.blocks if b.end > since]

    def tick(self, now: float) -> None:
        if (
            not self.waiters
            and not self.retiring
            and time.monotonic() - self.last_used > TAIL_IDLE_SECONDS
        ):
            self.retiring = True
            self._retiring = asyncio.ensure_future(self.retire())

    async def retire(self) -> None:
        _tails(asyncio.get_running_loop()).pop(self.collection_id, None)
        if self.feeds is not None:
            await self.feeds.leave(self, collection_id=self.collection_id)
            self.feeds.hub.unregister(self)

    async def shut_down(self, retry_after_ms: int | None = None) -> None:
        for waiter in list(self.waiters):
            waiter.woken.set()

    async def disconnect_requested(self) -> None:
        return None


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, CollectionTail]] = (
    weakref.WeakKeyDictionary()
)


def _tails(loop: asyncio.AbstractEventLoop) -> dict[int, CollectionTail]:
    return _by_loop.setdefault(loop, {})


def tail_if_any(collection_id: int) -> CollectionTail | None:
    with contextlib.suppress(RuntimeError):
        return _tails(asyncio.get_running_loop()).get(collection_id)
    return None


async def tail_for(collection_id: int, from_seq: int, epoch: int) -> CollectionTail:
    """The collection's tail in this process, joined to the hub at `from_seq` if new."""
    tails = _tails(asyncio.get_running_loop())
    tail = tails.get(collection_id)
    if tail is not None:
        return tail
    tail = CollectionTail(collection_id)
    tail.epoch = epoch
    tails[collection_id] = tail
    tail.feeds = live_feeds()
    process_hub().register(tail)
    offered = await tail.feeds.join(tail, collection_id=collection_id, from_seq=from_seq)
    if tail.position is None:
        tail.position = offered
    return tail
