"""The topic doorbell, and the one listener per process that hears it.

The database is the truth and the channel layer only rings the bell (docs/decisions/
0002-the-database-is-the-truth.md): after a publish commits, a layer message says "topic 5 is
at offset 99" (offset -1: the topic was deleted). Subscribers then read what they may send
from the database. A lost bell only delays delivery until the hub's periodic poll, which reads
the last offset of every topic this process has subscribers for, in one query.

Fan-out: one `TopicHub` per event loop (one per daphne process) holds one channel-layer
channel, joins each topic's group once however many local subscribers it has, and calls each
local subscriber's callback. Subscribers never touch the channel layer themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from functools import partial

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction

from replication.doorbell import layer_send_soon

logger = logging.getLogger(__name__)

TOPIC_MOVED = "topic.moved"
DELETED = -1
# Re-join the groups this often: Redis forgets a member after `group_expiry`.
REJOIN_SECONDS = 60.0

Listener = Callable[[int, int], None]


def topic_group(topic_id: int) -> str:
    return f"dg.topic.{topic_id}"


def _ring(topic_id: int, offset: int) -> None:
    layer_send_soon(
        topic_group(topic_id),
        {"type": TOPIC_MOVED, "topic": topic_id, "offset": offset},
        what=f"doorbell for topic {topic_id} at offset {offset}",
    )


def ring_on_commit(*, topic_id: int, offset: int) -> None:
    """Ring the topic's bell once the current transaction commits."""
    transaction.on_commit(partial(_ring, topic_id, offset))


class TopicHub:
    """One process's (one event loop's) doorbell listener and poller for every topic."""

    def __init__(self, layer: BaseChannelLayer) -> None:
        self.layer = layer
        self.listeners: dict[int, set[Listener]] = {}
        self.positions: dict[int, int] = {}
        self.channel: str | None = None
        self.bells_heard = 0
        # Topics whose group join failed (Redis down): the poll joins them again.
        self.unjoined: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self, topic_id: int, listener: Listener) -> None:
        if topic_id not in self.listeners:
            self.listeners[topic_id] = set()
            await self._group_add(topic_id)
        self.listeners[topic_id].add(listener)
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen()),
                asyncio.create_task(self._poll()),
            ]

    async def _group_add(self, topic_id: int) -> bool:
        """Join the topic's group; without Redis, leave it to the poll (found by make chaos).

        A subscriber must not fail because the doorbell is down: the database is the truth
        and the poll delivers meanwhile. The poll joins the group again once Redis is back.
        """
        try:
            if self.channel is None:
                # The default prefix on purpose: channels_redis receives every process-local
                # ("!") channel through one shared Redis key per prefix and one lock, so a
                # channel with another prefix is only read while it happens to hold that lock.
                self.channel = await self.layer.new_channel()
            await self.layer.group_add(topic_group(topic_id), self.channel)
        except Exception:
            logger.warning("could not join the doorbell of topic %s", topic_id, exc_info=True)
            self.unjoined.add(topic_id)
            return False
        self.unjoined.discard(topic_id)
        return True

    async def leave(self, topic_id: int, listener: Listener) -> None:
        members = self.listeners.get(topic_id)
        if members is None:
            return
        members.discard(listener)
        if members:
            return
        del self.listeners[topic_id]
        self.positions.pop(topic_id, None)
        self.unjoined.discard(topic_id)
        if self.channel is not None:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(topic_group(topic_id), self.channel)
        if not self.listeners:
            for task in self._tasks:
                task.cancel()
            self._tasks = []

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

    async def _listen(self) -> None:
        while True:
            if self.channel is None:  # not made yet (Redis down): the poll makes it
                await asyncio.sleep(1.0)
                continue
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("topic doorbell receive failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if message.get("type") == TOPIC_MOVED:
                self.bells_heard += 1
                self.dispatch(int(message["topic"]), int(message["offset"]))

    async def _poll(self) -> None:
        from topics.selectors import topic_last_offsets

        interval = float(settings.DATAGATE["TOPIC_POLL_INTERVAL"])
        since_rejoin = 0.0
        while True:
            await asyncio.sleep(interval)
            since_rejoin += interval
            topic_ids = list(self.listeners)
            if not topic_ids:
                continue
            # Re-joining and polling fail apart: Redis being down must not stop the poll.
            rejoin = topic_ids if since_rejoin >= REJOIN_SECONDS else list(self.unjoined)
            if since_rejoin >= REJOIN_SECONDS:
                since_rejoin = 0.0
            for topic_id in rejoin:
                if topic_id in self.listeners and not await self._group_add(topic_id):
                    break  # still down: the next poll tries again
            try:
                found = await database_sync_to_async(topic_last_offsets)(topic_ids=topic_ids)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("topic poll failed; retrying", exc_info=True)
                continue
            for topic_id in topic_ids:
                self.dispatch(topic_id, found.get(topic_id, DELETED))


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TopicHub] = weakref.WeakKeyDictionary()


def topic_hub() -> TopicHub:
    """This event loop's hub (daphne runs one loop per process; tests may run several)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("topics need a channel layer (CHANNEL_LAYERS)")
        hub = TopicHub(layer)
        _hubs[loop] = hub
    return hub
