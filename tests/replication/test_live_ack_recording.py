"""A live replica's acked position is recorded coalesced, and never lost at disconnect.

Recording every live feed.ack cost two UPDATEs per replica per change (bench/RESULTS.md), so
live acks are noted in the process's live hub and written in one step per second; what is held
back is written on disconnect.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

from replication.models import Replica
from tests.support.sync_conversation import Opener

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_channel_layer", "fast_passwords"),
]


async def acked_seq(origin: str) -> int:
    return await database_sync_to_async(
        lambda: Replica.objects.get(replica_id=origin).last_acked_seq
    )()


async def wait_for_acked(origin: str, seq: int, seconds: float = 20) -> int:
    deadline = time.monotonic() + seconds
    got = await acked_seq(origin)
    while got < seq and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        got = await acked_seq(origin)
    return got


async def test_the_last_live_ack_is_recorded_when_the_replica_disconnects(
    open_replica: Opener,
) -> None:
    alice, bob = await open_replica(), await open_replica()
    await alice.sync()
    await bob.sync()
    for index in range(5):
        alice.put(f"d{index}", n=index)
        await alice.send_feed()
    await bob.feed_until(5)
    assert await acked_seq(bob.origin) <= 5
    await bob.disconnect()
    assert await wait_for_acked(bob.origin, 5) == 5


async def test_a_held_back_live_ack_is_recorded_while_the_replica_stays_connected(
    open_replica: Opener,
) -> None:
    alice, bob = await open_replica(), await open_replica()
    await alice.sync()
    await bob.sync()
    for index in range(3):
        alice.put(f"d{index}", n=index)
        await alice.send_feed()
    await bob.feed_until(3)
    assert await wait_for_acked(bob.origin, 3) == 3
