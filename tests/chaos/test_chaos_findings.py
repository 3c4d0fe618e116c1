"""Regression tests for what the chaos run (`make chaos`, docs/guarantees.md) found.

Each test is the smallest history that showed the bug, replayed against the services.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from accounts.access import System
from core.hub import Hub
from replication.models import Collection, Document, Tombstone
from replication.services.documents import document_delete
from replication.services.engine import batch_apply, now_ms
from topics.doorbell import TOPIC_MOVED, TopicFeeds, topic_group


def push(collection: Collection, doc_id: str, modified: int, **fields: object) -> None:
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        feed={"changeSet": [{"_id": doc_id, "_revision": 1, "_modified": modified, **fields}]},
        origin="offline-replica",
    )


@pytest.mark.storage
@pytest.mark.django_db
def test_a_delete_of_an_id_the_server_has_not_heard_of_wins_over_the_older_write_pushed_later(
    collection: Collection,
) -> None:
    """An offline replica writes an id; the HTTP API deletes it before the replica pushes.

    The delete was acknowledged (204) after the write was made, so the write must not bring
    the document back when it arrives (chaos run: an acknowledged delete resurrected).
    """
    written_offline = now_ms() - 1_000
    document_delete(
        actor=System("test"), collection_id=collection.pk, doc_id="fresh", origin="http"
    )
    assert Tombstone.objects.filter(collection=collection, doc_id="fresh").exists()
    push(collection, "fresh", written_offline, v="offline")
    assert not Document.objects.filter(collection=collection, doc_id="fresh").exists()


@pytest.mark.storage
@pytest.mark.django_db
def test_deleting_an_id_again_moves_its_tombstone_to_the_later_delete(
    collection: Collection,
) -> None:
    """An old tombstone must not let a write made between the two deletes come back."""
    document_delete(actor=System("test"), collection_id=collection.pk, doc_id="a", origin="http")
    first = Tombstone.objects.get(collection=collection, doc_id="a").deleted_at
    between = first + 5
    while now_ms() <= between:
        pass
    document_delete(actor=System("test"), collection_id=collection.pk, doc_id="a", origin="http")
    assert Tombstone.objects.get(collection=collection, doc_id="a").deleted_at > between
    push(collection, "a", between, v="made between the deletes")
    assert not Document.objects.filter(collection=collection, doc_id="a").exists()


class FlakyLayer(InMemoryChannelLayer):
    """The in-memory layer, with a switch that makes it fail like a Redis that is down."""

    down = True

    async def new_channel(self, prefix: str = "specific.") -> str:
        if self.down:
            raise ConnectionError("Error 111 connecting to redis")
        return await super().new_channel(prefix)

    async def group_add(self, group: str, channel: str) -> None:
        if self.down:
            raise ConnectionError("Error 111 connecting to redis")
        await super().group_add(group, channel)


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


@pytest.mark.django_db
async def test_a_topic_subscriber_joins_while_redis_is_down_and_the_hub_rejoins_once_it_is_back(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos run: with Redis down a subscribe failed, and the doorbell stayed deaf after.

    Now the join succeeds (the poll delivers meanwhile: the database is the truth) and the
    hub joins the topic's group as soon as Redis answers again.
    """
    settings.DATAGATE = {**settings.DATAGATE, "TOPIC_POLL_INTERVAL": 0.05}
    offsets = {7: 3}
    monkeypatch.setattr("topics.selectors.topic_last_offsets", lambda *, topic_ids: dict(offsets))
    layer = FlakyLayer()
    hub = Hub(layer)
    feeds = TopicFeeds(hub)
    heard: list[int] = []

    def listener(topic_id: int, offset: int) -> None:
        heard.append(offset)

    await feeds.join(7, listener)
    assert hub.unjoined == {topic_group(7)}
    await eventually(lambda: heard == [3])  # the poll, while the doorbell is down
    layer.down = False
    await eventually(lambda: not hub.unjoined)
    await layer.group_send(topic_group(7), {"type": TOPIC_MOVED, "topic": 7, "offset": 5})
    await eventually(lambda: heard[-1:] == [5])
    assert feeds.bells_heard == 1
    await feeds.leave(7, listener)
    hub.close()
