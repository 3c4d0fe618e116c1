"""The topic doorbell, and the process hub's adapter that hears it.

The database is the truth and the channel layer only rings the bell (docs/decisions/
0002-the-database-is-the-truth.md): after a publish commits, a layer message says "topic 5 is
at offset 99" (offset -1: the topic was deleted). Subscribers then read what they may send
from the database. A lost bell only delays delivery until the hub's poll (`TOPIC_POLL_INTERVAL`),
which reads the last offset of every topic this process has subscribers for, in one query.

Fan-out: the process hub (`core.hub.Hub`: one layer channel, one rejoin rule, one poll
fallback) joins each topic's group once however many local subscribers it has; `TopicFeeds`,
its adapter for topics, calls each local subscriber's callback. Subscribers never touch the
channel layer themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from core.hub import Hub, group_name, process_hub
from replication.doorbell import layer_send_soon

logger = logging.getLogger(__name__)

TOPIC_MOVED = "topic.moved"
DELETED = -1

Listener = Callable[[int, int], None]


def topic_group(topic_id: int) -> str:
    return group_name("topic", topic_id)


def _ring(topic_id: int, offset: int) -> None:
    layer_send_soon(
        topic_group(topic_id),
        {"type": TOPIC_MOVED, "topic": topic_id, "offset": offset},
        what=f"doorbell for topic {topic_id} at offset {offset}",
    )


def ring_on_commit(*, topic_id: int, offset: int) -> None:
    """Ring the topic's bell once the current transaction commits."""
    transaction.on_commit(partial(_ring, topic_id, offset))


def poll_interval() -> float:
    """Seconds between database checks of the subscribed topics (DATAGATE TOPIC_POLL_INTERVAL)."""
    return float(settings.DATAGATE["TOPIC_POLL_INTERVAL"])


class TopicFeeds:
    """The process hub's adapter for topics: local subscribers by topic, and their positions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.listeners: dict[int, set[Listener]] = {}
        self.positions: dict[int, int] = {}
        self.bells_heard = 0
        hub.on(TOPIC_MOVED, self._topic_moved)
        hub.every("topics", poll_interval, self._poll)

    async def join(self, topic_id: int, listener: Listener) -> None:
        """Call `listener(topic_id, offset)` whenever the topic moves. Never fails for a deaf
        doorbell (found by make chaos): the poll delivers, and the hub joins again."""
        if topic_id not in self.listeners:
            self.listeners[topic_id] = set()
            await self.hub.group_join(topic_group(topic_id))
        self.listeners[topic_id].add(listener)

    async def leave(self, topic_id: int, listener: Listener) -> None:
        members = self.listeners.get(topic_id)
        if members is None:
            return
        members.discard(listener)
        if members:
            return
        del self.listeners[topic_id]
        self.positions.pop(topic_id, None)
        await self.hub.group_leave(topic_group(topic_id))

    def dispatch(self, topic_id: int, offset: int) -> None:
        """Tell every local subscriber of the topic where it is now."""
        if offset != DELETED:
            if offset <= self.positions.get(topic_id, 0):
                return
            self.positions[topic_id] = offset
        for listener in list(self.listeners.get(topic_id, ())):
            try:
                listener(topic_id, offset)
            except Exception:
                logger.exception("topic listener failed")

    def _topic_moved(self, message: dict[str, Any]) -> None:
        self.bells_heard += 1
        self.dispatch(int(message["topic"]), int(message["offset"]))

    async def _poll(self) -> None:
        from topics.selectors import topic_last_offsets

        topic_ids = list(self.listeners)
        if not topic_ids:
            return
        found = await database_sync_to_async(topic_last_offsets)(topic_ids=topic_ids)
        for topic_id in topic_ids:
            self.dispatch(topic_id, found.get(topic_id, DELETED))


def topic_feeds() -> TopicFeeds:
    """This process's topic subscribers (on `core.hub.process_hub()`)."""
    return process_hub().adapter(TopicFeeds)
