"""Scripted conversations with the replication consumer (Channels' WebsocketCommunicator).

Every message of the protocol and every bad input: each is answered with its own code, and
nothing already accepted is lost (docs/protocol.md, docs/errors.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async

from accounts.access import System
from replication.models import Collection, Document, ErrorEvent, Replica, Tombstone
from tests.support.sync_conversation import Opener
from tests.support.wire_replica import (
    BATCH_ACK,
    BATCH_END,
    BATCH_START,
    CONNECT_ACK,
    DISCONNECT,
    ERROR,
    FEED,
    Closed,
    WireReplica,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_channel_layer", "fast_passwords"),
]


async def error_codes() -> list[str]:
    return await database_sync_to_async(
        lambda: list(ErrorEvent.objects.order_by("pk").values_list("code", flat=True))
    )()


async def stored_ids() -> tuple[set[str], set[str]]:
    def read() -> tuple[set[str], set[str]]:
        return (
            set(Document.objects.values_list("doc_id", flat=True)),
            set(Tombstone.objects.values_list("doc_id", flat=True)),
        )

    return await database_sync_to_async(read)()


async def last_seq(world: dict[str, Any]) -> int:
    return await database_sync_to_async(
        lambda: Collection.objects.get(pk=world["collection"].pk).last_seq
    )()


# --- the happy path, message by message -----------------------------------------------------


async def test_connect_is_answered_with_a_connect_ack(open_replica: Opener) -> None:
    replica = await open_replica()
    ack = await replica.connect()
    assert ack["header"]["userName"] == "wendy"
    assert ack["header"]["correlationId"] is not None
    assert ack["header"]["transactionId"] == replica.transaction_id
    assert ack["readOnly"] is False
    assert ack["batchSize"] == 500
    assert ack["tombstoneTtl"] == 30
    assert ack["capabilities"] == ["live"]
    assert ack["endMarkers"]["collectionMarker"] == 0
    assert ack["endMarkers"]["tombstoneMarker"] > 0


async def test_push_pull_and_live_feed_between_two_replicas(
    open_replica: Opener, world: Any
) -> None:
    alice = await open_replica()
    bob = await open_replica(world["token_b"])
    alice.put("a", title="first")
    alice.put("b", title="second")
    alice.delete("gone")
    await alice.connect()
    acks = await alice.push()
    assert acks[0]["receipt"] == {"added": ["a", "b"], "removed": ["gone"], "rejected": []}
    assert acks[0]["nextOffset"] == 3
    assert not alice.journal
    pulled = await alice.pull()
    # Its own changes come back in the pull: the store is the truth.
    assert pulled["end"]["endMarkers"]["collectionMarker"] == 3
    assert alice.markers["collectionMarker"] == 3

    await bob.sync()
    assert set(bob.documents) == {"a", "b"}
    assert set(bob.tombstones) == {"gone"}
    assert bob.markers == alice.markers

    # Live: bob writes, alice receives the feed; alice deletes, bob receives the tombstone.
    bob.put("c", title="live")
    ack = await bob.send_feed()
    assert ack["receipt"]["added"] == ["c"]
    await alice.feed_until(4)
    assert alice.documents["c"]["title"] == "live"
    alice.delete("a")
    await alice.send_feed()
    await bob.feed_until(5)
    assert "a" in bob.tombstones
    assert alice.state() == bob.state()

    async def acked() -> int:
        return await database_sync_to_async(
            lambda: Replica.objects.get(replica_id=bob.origin).last_acked_seq
        )()

    # Live acks are recorded at most once a second: wait for it.
    for _ in range(200):
        if await acked() == 5:
            break
        await asyncio.sleep(0.05)
    assert await acked() == 5

    def alice_row() -> tuple[bool, int, int]:
        row = Replica.objects.get(replica_id=alice.origin)
        return row.online, row.pushed_count, row.last_pushed_seq

    # The replica table shows who is online and what they pushed.
    assert await database_sync_to_async(alice_row)() == (True, 4, 5)


async def test_pull_comes_in_chunks_with_several_in_flight(
    open_replica: Opener, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "CHUNK_SIZE": 2, "PULL_CHUNKS_IN_FLIGHT": 2}
    writer = await open_replica()
    for n in range(7):
        writer.put(f"d{n}", n=n)
    await writer.connect()
    await writer.push(chunk_size=3)
    await writer.disconnect()

    reader = await open_replica()
    await reader.connect()
    await reader.push()
    await reader.send(reader.message("no2.sync.batch.end", startMarkers=None, batchSize=10))
    await reader.expect("no2.sync.batch.end.ack")
    # Two chunks arrive before any ack: the server keeps PULL_CHUNKS_IN_FLIGHT ahead.
    first = await reader.expect(BATCH_START)
    second = await reader.expect("no2.sync.batch.continue")
    await reader.expect_nothing(0.3)
    assert first["batchSize"] == 2
    assert first["endMarkers"]["collectionMarker"] == 7
    assert [d["_id"] for d in first["feed"]["changeSet"] + second["feed"]["changeSet"]] == [
        "d0",
        "d1",
        "d2",
        "d3",
    ]
    seen = first["feed"]["changeSet"] + second["feed"]["changeSet"]
    for chunk in (first, second):
        await reader.send(reader.message(BATCH_ACK, chunk["header"]["id"], receipt={}))
    while True:
        message = await reader.receive()
        if message["header"]["messageType"] == BATCH_END:
            break
        seen += message["feed"]["changeSet"]
        await reader.send(reader.message(BATCH_ACK, message["header"]["id"], receipt={}))
    assert [d["n"] for d in seen] == list(range(7))
    assert message["endMarkers"]["collectionMarker"] == 7


async def test_a_client_without_live_gets_a_disconnect_after_the_pull(open_replica: Opener) -> None:
    replica = await open_replica(capabilities=[])
    await replica.sync()
    await replica.expect(DISCONNECT)
    assert await replica.expect_close() == 1000


async def test_client_disconnect_closes_1000_and_marks_the_replica_offline(
    open_replica: Opener,
) -> None:
    replica = await open_replica()
    await replica.sync()
    online = database_sync_to_async(lambda: Replica.objects.get(replica_id=replica.origin).online)
    assert await online() is True
    assert await replica.disconnect() == 1000
    assert await online() is False


async def test_stored_markers_resume_with_exactly_what_was_missed(open_replica: Opener) -> None:
    first = await open_replica()
    first.put("x", v=1)
    await first.sync()
    await first.disconnect()
    other = await open_replica()
    other.put("y", v=2)
    other.put("x", v=3)
    await other.sync()
    await other.disconnect()
    again = await open_replica()
    again.markers = first.markers
    again.documents = dict(first.documents)
    pulled = await again.pull() if await again.connect() else None
    assert pulled is not None
    changed = [d["_id"] for c in pulled["chunks"] for d in c["feed"]["changeSet"]]
    assert sorted(changed) == ["x", "y"]
    assert pulled["reset"] is False
    assert again.documents["x"]["v"] == 3


async def test_markers_ahead_of_the_server_get_a_reset_snapshot(open_replica: Opener) -> None:
    writer = await open_replica()
    writer.put("kept", v=1)
    await writer.sync()
    epoch = writer.markers["tombstoneMarker"]
    await writer.disconnect()
    restored = await open_replica()
    restored.markers = {"collectionMarker": 99, "tombstoneMarker": epoch}
    restored.documents = {"stale": {"_id": "stale", "_revision": 1, "_modified": 1, "_origin": "o"}}
    await restored.connect()
    pulled = await restored.pull()
    assert pulled["reset"] is True
    assert set(restored.documents) == {"kept"}
    assert restored.markers["collectionMarker"] == 1

    other_epoch = await open_replica()
    other_epoch.markers = {"collectionMarker": 1, "tombstoneMarker": epoch + 1}
    await other_epoch.connect()
    assert (await other_epoch.pull())["reset"] is True


# --- bad tokens and access ------------------------------------------------------------------


async def test_bad_expired_and_revoked_tokens_are_refused_with_4401(
    open_replica: Opener, world: Any, issue_token: Any
) -> None:
    expired = await database_sync_to_async(issue_token)(world["writer"], "read write", -10)
    revoked = await database_sync_to_async(issue_token)(world["writer"], "read write")

    def revoke() -> None:
        import hashlib

        from oauth2_provider.models import get_access_token_model

        # Tokens are stored hashed (issue 5): find this one by its checksum.
        checksum = hashlib.sha256(revoked.encode()).hexdigest()
        for token in get_access_token_model().objects.filter(token_checksum=checksum):
            token.revoke()

    await database_sync_to_async(revoke)()
    for token, reason in [
        ("not-a-token", "unknown or revoked"),
        (expired, "token expired at"),
        (revoked, "unknown or revoked"),
    ]:
        replica = await open_replica(token)
        await replica.send(replica.message("no2.sync.connect", authToken=token, capabilities=[]))
        error = await replica.expect(ERROR)
        assert error["code"] == "DG-1001"
        assert "failed to validate token" in error["error"]
        assert reason in error["error"]
        assert error["fatal"] is True
        assert await replica.expect_close() == 4401
    assert await error_codes() == ["DG-1001"] * 3


async def test_a_missing_collection_and_an_unreadable_one_look_alike(
    open_replica: Opener, world: Any, make_user: Any, issue_token: Any
) -> None:
    outsider = await database_sync_to_async(make_user)("otto")
    outsider_token = await database_sync_to_async(issue_token)(outsider, "read write")
    texts = []
    for token, path in [
        (world["reader_token"], "/ws/datagate/acme/nothing-here/"),
        (outsider_token, "/ws/datagate/acme/notes/"),
        (world["token"], "/ws/datagate/no-such-tenant/notes/"),
    ]:
        replica = await open_replica(token, path=path, collection=path.split("/")[4])
        replica.tenant = path.split("/")[3]
        await replica.send(replica.message("no2.sync.connect", authToken=token, capabilities=[]))
        error = await replica.expect(ERROR)
        assert error["code"] == "DG-3001"
        assert await replica.expect_close() == 4403
        texts.append(error["error"].split(":")[0])
    assert texts == ["DG-3001 collection not found"] * 3


async def test_a_writer_creates_a_missing_collection_on_connect(
    open_replica: Opener, settings: Any
) -> None:
    replica = await open_replica(path="/ws/datagate/acme/fresh/", collection="fresh")
    await replica.sync()
    assert await database_sync_to_async(Collection.objects.filter(name="fresh").exists)()
    settings.DATAGATE = {**settings.DATAGATE, "AUTO_CREATE_COLLECTIONS": False}
    refused = await open_replica(path="/ws/datagate/acme/other/", collection="other")
    await refused.send(
        refused.message("no2.sync.connect", authToken=refused.token, capabilities=[])
    )
    assert (await refused.expect(ERROR))["code"] == "DG-3001"


async def test_the_user_segment_must_be_the_tokens_user(open_replica: Opener) -> None:
    good = await open_replica(path="/ws/datagate/acme/notes/wendy/")
    await good.connect()
    bad = await open_replica(path="/ws/datagate/acme/notes/rita/")
    await bad.send(bad.message("no2.sync.connect", authToken=bad.token, capabilities=[]))
    assert (await bad.expect(ERROR))["code"] == "DG-1003"
    assert await bad.expect_close() == 4403


async def test_a_read_only_user_pushing_gets_every_change_rejected(
    open_replica: Opener, world: Any
) -> None:
    reader = await open_replica(world["reader_token"])
    ack = await reader.connect()
    assert ack["readOnly"] is True
    reader.put("mine", v=1)
    reader.delete("theirs")
    (batch_ack,) = await reader.push()
    receipt = batch_ack["receipt"]
    assert receipt["added"] == []
    assert receipt["removed"] == []
    assert {(r["id"], r["code"]) for r in receipt["rejected"]} == {
        ("mine", "DG-3002"),
        ("theirs", "DG-3002"),
    }
    scoped = await open_replica(world["read_scope_token"])
    assert (await scoped.connect())["readOnly"] is True
    scoped.put("mine", v=1)
    (scoped_ack,) = await scoped.push()
    assert [r["code"] for r in scoped_ack["receipt"]["rejected"]] == ["DG-1002"]
    assert await stored_ids() == (set(), set())
    assert await error_codes() == ["DG-3002", "DG-1002"]


# --- bad frames -----------------------------------------------------------------------------


async def test_not_json_before_connect_is_fatal_4400(open_replica: Opener) -> None:
    replica = await open_replica()
    await replica.send("{not json")
    error = await replica.expect(ERROR)
    assert (error["code"], error["fatal"]) == ("DG-2001", True)
    assert await replica.expect_close() == 4400


async def test_a_batch_before_connect_ack_is_fatal_and_not_applied(open_replica: Opener) -> None:
    replica = await open_replica()
    replica.put("early", v=1)
    await replica.send(replica.message(BATCH_START, feed=replica.journal_feed()))
    error = await replica.expect(ERROR)
    assert error["code"] == "DG-2006"
    assert "no2.sync.batch.start is not allowed in state OPEN" in error["error"]
    assert await replica.expect_close() == 4409
    assert await stored_ids() == (set(), set())


async def test_bad_frames_after_connect_ack_are_not_fatal_and_lose_nothing(
    open_replica: Opener,
) -> None:
    replica = await open_replica()
    await replica.connect()
    replica.put("kept", v=1)
    await replica.push()
    bad_frames = [
        ("{not json", "DG-2001"),
        (json.dumps({"no": "header"}), "DG-2002"),
        (json.dumps(replica.message("no2.sync.nonsense")), "DG-2003"),
        (json.dumps(replica.message(BATCH_END, batchSize="many")), "DG-2004"),
        (json.dumps({"header": {"messageType": BATCH_END}}), "DG-2004"),
    ]
    for frame, code in bad_frames:
        await replica.send(frame)
        error = await replica.expect(ERROR)
        assert (error["code"], error["fatal"]) == (code, False), error
    assert "batchSize" in replica.errors[3]["error"]
    assert "header.id" in replica.errors[4]["error"]
    # The session goes on: push more, pull everything.
    replica.put("after", v=2)
    await replica.push()
    await replica.pull()
    assert set(replica.documents) == {"kept", "after"}
    assert await error_codes() == [code for _, code in bad_frames]


@pytest.mark.parametrize(
    ("field", "value"), [("tenant", "other"), ("collection", "other"), ("userName", "rita")]
)
async def test_a_header_naming_another_session_is_fatal_4409(
    open_replica: Opener, field: str, value: str
) -> None:
    replica = await open_replica()
    await replica.connect()
    replica.put("kept", v=1)
    await replica.push()
    message = replica.message(BATCH_START, feed={"changeSet": [replica.put("lost", v=2)]})
    message["header"][field] = value
    await replica.send(message)
    error = await replica.expect(ERROR)
    assert error["code"] == "DG-2005"
    assert field in error["error"]
    assert await replica.expect_close() == 4409
    assert await stored_ids() == ({"kept"}, set())


async def test_a_repeated_chunk_changes_nothing_the_second_time(
    open_replica: Opener, world: Any
) -> None:
    replica = await open_replica()
    await replica.connect()
    replica.put("a", v=1)
    replica.delete("b")
    chunk = replica.message(BATCH_START, feed=replica.journal_feed(), nextOffset=2)
    await replica.send(chunk)
    first = await replica.expect(BATCH_ACK)
    seq = await last_seq(world)
    await replica.send(chunk)
    second = await replica.expect(BATCH_ACK)
    assert (
        first["receipt"]
        == second["receipt"]
        == {
            "added": ["a"],
            "removed": ["b"],
            "rejected": [],
        }
    )
    assert await last_seq(world) == seq == 2


async def test_an_oversized_frame_is_refused_with_1009_and_nothing_is_lost(
    open_replica: Opener, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "MAX_FRAME_BYTES": 4096}
    replica = await open_replica()
    await replica.connect()
    replica.put("small", v=1)
    await replica.push()
    replica.put("huge", blob="x" * 5000)
    await replica.send(replica.message(BATCH_START, feed=replica.journal_feed()))
    error = await replica.expect(ERROR)
    assert error["code"] == "DG-2007"
    assert await replica.expect_close() == 1009
    assert await stored_ids() == ({"small"}, set())


async def test_a_valid_message_in_the_wrong_state_is_fatal_and_names_the_state(
    open_replica: Opener,
) -> None:
    replica = await open_replica()
    await replica.connect()
    await replica.send(replica.message(FEED, feed={}))
    error = await replica.expect(ERROR)
    assert "no2.sync.feed is not allowed in state CONNECTED" in error["error"]
    assert await replica.expect_close() == 4409


async def test_a_socket_without_connect_is_closed_4408(open_replica: Opener, settings: Any) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "CONNECT_TIMEOUT": 0.2}
    replica = await open_replica()
    error = await replica.expect(ERROR)
    assert error["code"] == "DG-2008"
    assert await replica.expect_close() == 4408


# --- live flow control ----------------------------------------------------------------------


async def test_a_slow_replica_gets_a_bounded_window_then_one_coalesced_feed(
    open_replica: Opener, world: Any, settings: Any
) -> None:
    # Without pacing (LIVE_COALESCE_MAX 0), so that only the window holds feeds back.
    settings.DATAGATE = {**settings.DATAGATE, "FEED_WINDOW": 2, "LIVE_COALESCE_MAX": 0.0}
    slow = await open_replica()
    await slow.sync()
    writer = await open_replica(world["token_b"])
    await writer.sync()
    sent = []
    for n in range(2):  # one feed each: the next change is written once this one arrived
        writer.put(f"n{n}", n=n)
        await writer.send_feed()
        sent.append(await slow.next_feed(ack=False))
    first, second = sent
    for n in range(2, 6):
        writer.put(f"n{n}", n=n)
        await writer.send_feed()
    await slow.expect_nothing(0.5)  # the window is full: nothing more is sent
    await slow.send(slow.message("no2.sync.feed.ack", second["header"]["id"], receipt={}))
    rest = await slow.feed_until(6)
    assert first["endMarkers"]["collectionMarker"] == 1
    assert second["endMarkers"]["collectionMarker"] == 2
    assert len(rest) == 1  # the four others, coalesced
    assert rest[0]["startMarkers"]["collectionMarker"] == 2
    assert len(rest[0]["feed"]["changeSet"]) == 4
    assert slow.state()["documents"] == writer.state()["documents"]


async def test_live_feeds_sent_back_to_back_each_get_their_own_receipt_in_order(
    open_replica: Opener, world: Any
) -> None:
    writer = await open_replica(world["token_b"])
    await writer.sync()
    sent = []
    for n in range(12):
        doc = {"_id": f"b{n}", "_revision": 1, "_modified": time.time_ns() // 1_000_000, "n": n}
        if n == 5:
            doc["_secret"] = True  # rejected on its own (DG-4005); the others apply
        message = writer.message(FEED, feed={"changeSet": [doc], "tombstoneMap": {}})
        sent.append(message["header"]["id"])
        await writer.send(message)
    acks: list[dict[str, Any]] = []
    while len(acks) < len(sent):
        message = await writer.receive()
        if message["header"]["messageType"] == "no2.sync.feed.ack":
            acks.append(message)
    assert [a["header"]["correlationId"] for a in acks] == sent
    assert acks[5]["receipt"]["rejected"][0]["code"] == "DG-4005"
    assert acks[6]["receipt"]["added"] == ["b6"]
    documents, _ = await stored_ids()
    assert documents == {f"b{n}" for n in range(12)} - {"b5"}


async def test_a_disconnect_after_back_to_back_feeds_comes_after_their_receipts(
    open_replica: Opener, world: Any
) -> None:
    writer = await open_replica(world["token_b"])
    await writer.sync()
    for n in range(5):
        writer.put(f"d{n}", n=n)
        await writer.send(writer.message(FEED, feed=writer.journal_feed()))
        writer.journal.clear()
    await writer.send(writer.message(DISCONNECT))
    kinds = []

    async def receive_until_closed() -> None:
        while True:
            kinds.append((await writer.receive(2))["header"]["messageType"])

    with pytest.raises(Closed) as closed:
        await receive_until_closed()
    assert closed.value.code == 1000
    assert kinds.count("no2.sync.feed.ack") == 5  # every receipt before the close
    documents, _ = await stored_ids()
    assert {f"d{n}" for n in range(5)} <= documents


async def first_feed_unacked(
    open_replica: Opener, world: Any
) -> tuple[WireReplica, WireReplica, dict[str, Any]]:
    """A reader and a writer, live; the reader holds the writer's first feed without acking it,
    and the writer then sends two more changes."""
    reader = await open_replica()
    await reader.sync()
    writer = await open_replica(world["token_b"])
    await writer.sync()
    writer.put("n0", n=0)
    await writer.send_feed()
    first = await reader.next_feed(ack=False)
    for n in (1, 2):
        writer.put(f"n{n}", n=n)
        await writer.send_feed()
    return reader, writer, first


async def test_changes_wait_for_the_acks_of_the_last_feed_then_go_out_together(
    open_replica: Opener, world: Any, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "LIVE_COALESCE_MAX": 1.0}
    reader, writer, first = await first_feed_unacked(open_replica, world)
    await reader.expect_nothing(0.3)  # both sessions still owe the ack of the first feed
    await reader.send(reader.message("no2.sync.feed.ack", first["header"]["id"], receipt={}))
    await writer.feed_until(1)  # the writer's own copy of the first feed, acked
    rest = await reader.feed_until(3, timeout=2)
    assert len(rest) == 1
    assert sorted(doc["_id"] for doc in rest[0]["feed"]["changeSet"]) == ["n1", "n2"]


async def test_held_changes_go_out_after_live_coalesce_max_without_acks(
    open_replica: Opener, world: Any, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "LIVE_COALESCE_MAX": 0.3}
    started = time.monotonic()  # before the first feed, whose sending starts the hold
    reader, _, _ = await first_feed_unacked(open_replica, world)
    held = await reader.next_feed(ack=False)
    assert time.monotonic() - started >= 0.3
    assert sorted(doc["_id"] for doc in held["feed"]["changeSet"]) == ["n1", "n2"]


async def test_a_replica_that_never_acks_is_closed_4429(
    open_replica: Opener, world: Any, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "FEED_ACK_TIMEOUT": 0.5, "LIVE_POLL_INTERVAL": 0.1}
    silent = await open_replica()
    await silent.sync()
    writer = await open_replica(world["token_b"])
    await writer.sync()
    writer.put("ping", v=1)
    await writer.send_feed()
    await silent.next_feed(ack=False)
    error = await silent.expect(ERROR)
    assert error["code"] == "DG-5001"
    assert await silent.expect_close() == 4429


async def test_a_change_made_outside_any_session_reaches_live_replicas(
    open_replica: Opener, world: Any
) -> None:
    from replication.services.documents import document_put

    replica = await open_replica()
    await replica.sync()
    await database_sync_to_async(document_put)(
        actor=System("test"),
        collection_id=world["collection"].pk,
        doc_id="admin-made",
        body={"v": 1},
        origin="admin",
    )
    await replica.feed_until(1)
    assert replica.documents["admin-made"]["v"] == 1


async def test_every_error_sent_is_recorded_as_an_error_event(open_replica: Opener) -> None:
    replica = await open_replica()
    await replica.connect()
    await replica.send("nope")
    await replica.expect(ERROR)

    def event() -> tuple[str, str, bool, int | None]:
        e = ErrorEvent.objects.get()
        return e.code, e.collection, e.fatal, e.replica_id

    code, collection, fatal, replica_pk = await database_sync_to_async(event)()
    assert (code, collection, fatal) == ("DG-2001", "notes", False)
    assert replica_pk is not None
    assert CONNECT_ACK  # imported for the reader: the message code of a connect.ack


async def test_a_lost_doorbell_only_delays_the_feed(
    open_replica: Opener, world: Any, settings: Any
) -> None:
    from channels.layers import get_channel_layer

    from core.hub import process_hub
    from replication.doorbell import collection_group
    from replication.live import live_feeds
    from replication.services.documents import document_put

    settings.DATAGATE = {**settings.DATAGATE, "LIVE_POLL_INTERVAL": 0.2}
    replica = await open_replica()
    await replica.sync()
    hub = process_hub()
    for _ in range(400):  # the server joins the live feed right after the batch.end.ack
        if world["collection"].pk in live_feeds().feeds and hub.channel is not None:
            break
        await asyncio.sleep(0.05)
    assert hub.channel is not None
    # The process drops out of the doorbell group (as when a membership expires): no bell rings
    # here any more, and the database poll still brings the change.
    await get_channel_layer().group_discard(collection_group(world["collection"].pk), hub.channel)
    await database_sync_to_async(document_put)(
        actor=System("test"),
        collection_id=world["collection"].pk,
        doc_id="unrung",
        body={"v": 1},
        origin="admin",
    )
    await replica.feed_until(1)
    assert replica.documents["unrung"]["v"] == 1
