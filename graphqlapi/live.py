"""GraphQL subscriptions, fed by the same per-process hub as the sync feeds (`core.hub`).

A `documentChanges` subscription is one more session of the collection's `CollectionFeed` in
`replication.live.LiveFeeds`: the hub reads each change from the database once and offers the
same `FeedBlock` to every replica and subscription of the process; the subscription only
filters it through its reader's key rules and view. `topicMessages` listens to
`topics.doorbell.TopicFeeds` the same way the topics websocket does. Neither polls per
subscriber: a subscription wakes when its hub has something, or every poll interval of the hub
to re-check its token (docs/graphql.md, "Subscriptions").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async

from core.hub import process_hub
from graphqlapi import selectors
from graphqlapi.context import GraphQLContext
from replication.live import FeedBlock, live_feeds, poll_interval
from replication.selectors import Change
from topics import selectors as topic_selectors
from topics.doorbell import DELETED, topic_feeds
from topics.requests import Caller, request_subscribe, request_subscribe_position

# A sentinel on the inbox: the server is shutting down, or an operator disconnected us.
_CLOSED = object()


class SubscriptionSession:
    """A `LiveSession` for the hub: it queues the blocks it is offered and never holds up the
    feed's pacing (it owes no feed.ack: `offer` answers False)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def offer(self, block: FeedBlock) -> bool:
        self.inbox.put_nowait(block)
        return False

    def tick(self, now: float) -> None:
        return None

    async def shut_down(self, retry_after_ms: int | None = None) -> None:
        self.inbox.put_nowait(_CLOSED)

    async def disconnect_requested(self) -> None:
        self.inbox.put_nowait(_CLOSED)


async def document_changes(
    context: GraphQLContext, scope: selectors.Scope, *, after_seq: int | None = None
) -> AsyncIterator[Change]:
    """Every change of the scope after `after_seq` (None: from now on), as its reader sees
    it, in seq order: the changes before the hub's position are read from the database, the
    rest come with the hub's blocks."""
    hub = process_hub()
    feeds = live_feeds()
    session = SubscriptionSession()
    collection_id = scope.collection.pk
    head = await database_sync_to_async(selectors.live_start)(scope=scope)
    position = head if after_seq is None else min(after_seq, head)
    hub.register(session)
    try:
        # Joined at the head, never behind it: a new feed must not re-read old changes for
        # the replicas that join it later. What lies before is read here (the gap below).
        offered = await feeds.join(session, collection_id=collection_id, from_seq=head)
        while True:
            if offered > position:  # the hub is ahead of us: read the gap ourselves
                gap = await database_sync_to_async(selectors.changes_between)(
                    scope=scope, after_seq=position, up_to_seq=offered
                )
                for change in gap:
                    yield change
                position = offered
            try:
                item = await asyncio.wait_for(session.inbox.get(), poll_interval())
            except TimeoutError:
                await context.user_with("read")  # a revoked token ends the subscription
                continue
            if item is _CLOSED:
                return
            block: FeedBlock = item
            if block.start > position:
                offered = block.start
                session.inbox.put_nowait(block)  # after the gap, on the next turn
                continue
            for change in block.with_values():
                if change.seq <= position:
                    continue
                visible = scope.visible(change)
                if visible is not None:
                    yield visible
            position = max(position, block.end)
            offered = position
    finally:
        with contextlib.suppress(Exception):
            await feeds.leave(session, collection_id=collection_id)
        hub.unregister(session)


async def topic_messages(
    context: GraphQLContext,
    caller: Caller,
    *,
    topic: str,
    start_from: str | tuple[int, int | None],
) -> AsyncIterator[topic_selectors.TopicMessage]:
    """The topic's messages from `start_from` on, as they are published."""
    topic_id = await database_sync_to_async(request_subscribe)(caller=caller, name=topic)
    hub = topic_feeds()
    moved = asyncio.Event()
    deleted = False

    def listener(_topic_id: int, offset: int) -> None:
        nonlocal deleted
        if offset == DELETED:
            deleted = True
        moved.set()

    await hub.join(topic_id, listener)
    try:
        # Read after the hub listens, so that no bell is missed.
        position = await database_sync_to_async(request_subscribe_position)(
            caller=caller, name=topic, topic_id=topic_id, start_from=start_from, batch_size=None
        )
        next_offset = position.next_offset
        while True:
            moved.clear()
            found = await database_sync_to_async(topic_selectors.messages_read)(
                topic_id=topic_id, from_offset=next_offset, limit=position.batch_size
            )
            if found is None or deleted:
                return
            messages, _last = found
            for message in messages:
                yield message
                next_offset = message.offset + 1
            if len(messages) == position.batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), poll_interval())
            if not moved.is_set():
                await context.user_with("topics")
    finally:
        await hub.leave(topic_id, listener)
