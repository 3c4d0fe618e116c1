"""End to end: a real daphne process and real `websockets` clients (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from channels.db import database_sync_to_async

from replication.selectors import collection_state
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import DISCONNECT, ERROR, WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def tokens(collection: Any, member: Any, issue_token: Any) -> list[str]:
    """Tokens of three writers of acme/notes."""
    users = [member(name, "writer") for name in ("ann", "ben", "cat")]
    return [issue_token(user, "read write") for user in users]


async def open_replica(server: DaphneServer, token: str, name: str) -> WireReplica:
    transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/")
    return WireReplica(
        transport=transport, token=token, tenant="acme", collection="notes", origin=name
    )


def scribble(replica: WireReplica, rng: random.Random, ids: list[str], count: int) -> None:
    """Local writes and deletes on overlapping ids, as an offline device would make them."""
    for _ in range(count):
        doc_id = rng.choice(ids)
        if rng.random() < 0.25:
            replica.delete(doc_id)
        else:
            replica.put(doc_id, by=replica.origin, n=rng.randrange(1000))


async def test_three_replicas_converge_and_live_changes_reach_the_others(
    tmp_path: Any, tokens: list[str], collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path, extra_env={"DATAGATE_MAX_FRAME_BYTES": "65536"})
    try:
        ann, ben, cat = [
            await open_replica(server, token, name)
            for token, name in zip(tokens, ("ann", "ben", "cat"), strict=True)
        ]
        await cat.sync()  # live before anyone pushes
        rng = random.Random(7)
        ids = [f"doc-{n}" for n in range(40)]
        scribble(ann, rng, ids, 150)
        scribble(ben, rng, ids, 150)
        # Two replicas push (in several chunks each) at the same time.
        await asyncio.gather(ann.connect(), ben.connect())
        await asyncio.gather(ann.push(chunk_size=20), ben.push(chunk_size=20))
        await asyncio.gather(ann.pull(), ben.pull())
        assert not ann.journal
        assert not ben.journal

        state = await database_sync_to_async(collection_state)(collection_id=collection.pk)
        head = max(r.markers["collectionMarker"] for r in (ann, ben))
        for replica in (ann, ben, cat):
            await replica.feed_until(head)
        assert ann.state() == ben.state() == cat.state()
        assert set(cat.documents) == set(state["documents"])
        assert set(cat.tombstones) == set(state["tombstones"])
        assert {k: d["_revision"] for k, d in cat.documents.items()} == {
            k: d["revision"] for k, d in state["documents"].items()
        }

        # A live change from one replica reaches the other two, in order, with no gap.
        ann.put("live-1", v=1)
        ann.delete(ids[0])
        await ann.send_feed()
        target = ann.markers["collectionMarker"] + 2
        await ben.feed_until(target)
        await cat.feed_until(target)
        assert ben.documents["live-1"] == cat.documents["live-1"]
        assert ids[0] in ben.tombstones
        assert ids[0] in cat.tombstones

        # An oversized frame: an error first, then close 1009; what was accepted stays.
        ben.put("huge", blob="x" * 70_000)
        await ben.send(ben.message("no2.sync.feed", feed=ben.journal_feed()))
        assert await ben.expect_close() == 1009
        assert ben.errors[-1]["code"] == "DG-2007"
        after = await database_sync_to_async(collection_state)(collection_id=collection.pk)
        assert "huge" not in after["documents"]
        assert "live-1" in after["documents"]
        assert "Traceback" not in server.log()
    finally:
        server.stop()


async def test_shutdown_sends_disconnect_then_closes_1001(
    daphne: DaphneServer, tokens: list[str]
) -> None:
    live = await open_replica(daphne, tokens[0], "live")
    await live.sync()
    pushing = await open_replica(daphne, tokens[1], "pushing")
    await pushing.connect()
    loop = asyncio.get_running_loop()
    stopping = loop.run_in_executor(None, daphne.stop)
    for replica in (live, pushing):
        await replica.expect(DISCONNECT)
        assert await replica.expect_close() == 1001
        assert not [e for e in replica.errors if e["header"]["messageType"] == ERROR]
    await stopping
    assert "shutting down: closing 2 replication sessions" in daphne.log()
    assert "Traceback" not in daphne.log()
