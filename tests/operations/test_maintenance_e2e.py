"""End to end over the websocket: tombstone GC with a replica that stayed offline past the TTL,
and a restore from an older export. A real daphne process and real `websockets` clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command

from accounts.access import System
from replication.maintenance import DAY_MS, tombstones_collect
from replication.models import Replica
from replication.selectors import collection_state
from replication.services.engine import batch_apply, now_ms
from replication.verify import collection_verify
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OLD = now_ms() - 60 * DAY_MS
HOUR_MS = 3_600_000


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def tokens(collection: Any, member: Any, issue_token: Any) -> list[str]:
    users = [member(name, "writer") for name in ("ann", "ben", "cat")]
    return [issue_token(user, "read write") for user in users]


async def open_replica(server: DaphneServer, token: str, name: str) -> WireReplica:
    transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/")
    return WireReplica(
        transport=transport, token=token, tenant="acme", collection="notes", origin=name
    )


async def reopen(server: DaphneServer, replica: WireReplica) -> None:
    """A new session for a replica that disconnected: same store, new socket."""
    replica.transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/")
    replica.transaction_id = str(uuid.uuid4())


def drop_purged(replica: WireReplica, acks: list[dict[str, Any]]) -> list[str]:
    """What a client does with DG-7001: the document was deleted; drop change and copy."""
    purged = [r["id"] for ack in acks for r in ack["receipt"]["rejected"] if r["code"] == "DG-7001"]
    for doc_id in purged:
        replica.journal.pop(doc_id, None)
        replica.documents.pop(doc_id, None)
    return purged


async def acknowledged(replica_id: str, seq: int) -> None:
    """Wait until the server has recorded that a replica acknowledged `seq`."""

    def done() -> bool:
        return Replica.objects.filter(replica_id=replica_id, last_acked_seq__gte=seq).exists()

    deadline = time.monotonic() + 20
    while not await database_sync_to_async(done)():
        assert time.monotonic() < deadline, f"{replica_id} never acknowledged {seq}"
        await asyncio.sleep(0.05)


async def server_documents(collection: Any) -> dict[str, Any]:
    state = await database_sync_to_async(collection_state)(collection_id=collection.pk)
    return {doc_id: row["body"] for doc_id, row in state["documents"].items()}


def bodies(replica: WireReplica) -> dict[str, Any]:
    return {
        doc_id: {k: v for k, v in doc.items() if not k.startswith("_")}
        for doc_id, doc in replica.documents.items()
    }


async def test_a_replica_offline_past_the_ttl_brings_back_neither_a_deleted_document_nor_an_edit(
    tmp_path: Path, tokens: list[str], collection: Any
) -> None:
    seed = {
        "changeSet": [
            {"_id": name, "_revision": 1, "_modified": OLD, "title": name.upper()}
            for name in ("a", "b", "c")
        ]
    }
    await database_sync_to_async(batch_apply)(
        actor=System("test"), collection_id=collection.pk, feed=seed, origin="seed"
    )
    server = DaphneServer.start(tmp_path=tmp_path)
    try:
        stale = await open_replica(server, tokens[0], "stale")
        other = await open_replica(server, tokens[1], "other")
        await stale.sync()
        await other.sync()  # and stays live
        assert set(stale.documents) == set(other.documents) == {"a", "b", "c"}
        await stale.disconnect()
        old_b = dict(stale.documents["b"])

        # Offline, the stale replica edits "a"; the edit is older than the delete below.
        edit = {**stale.documents["a"], "title": "edited offline", "_revision": 2}
        edit.update({"_modified": OLD + HOUR_MS, "_origin": "stale"})
        stale.documents["a"] = edit
        stale.journal["a"] = edit

        # A writer deletes "a" and "b" (its clock then: two months ago); "other" sees it live.
        writer = await open_replica(server, tokens[2], "writer")
        await writer.connect()
        for doc_id in ("a", "b"):
            writer.tombstones[doc_id] = OLD + DAY_MS
            writer.journal[doc_id] = OLD + DAY_MS
        await writer.push()
        await writer.pull()
        await other.feed_until(writer.markers["collectionMarker"])
        assert set(other.documents) == {"c"}

        # More than the TTL later, GC collects both tombstones.
        # (GC waits for connected replicas to acknowledge a tombstone: let the acks land.)
        await acknowledged(other.origin, writer.markers["collectionMarker"])
        report = await database_sync_to_async(tombstones_collect)(collection_id=collection.pk)
        assert report.collected == 2

        # The stale replica reconnects: the edit is refused, the pull is a reset snapshot.
        await reopen(server, stale)
        await stale.connect()
        acks = await stale.push()
        assert drop_purged(stale, acks) == ["a"]
        pulled = await stale.pull()
        assert pulled["reset"] is True
        expected = {"c": {"title": "C"}}
        assert await server_documents(collection) == expected
        assert bodies(stale) == expected

        # Pushing the old copy of "b" it once held (live, now) is refused the same way.
        stale.journal["b"] = old_b
        ack = await stale.send_feed()
        assert [(r["id"], r["code"]) for r in ack["receipt"]["rejected"]] == [("b", "DG-7001")]
        stale.journal.pop("b")

        # Nothing reached anyone: the server and every replica hold just "c".
        assert await server_documents(collection) == expected
        await other.expect_nothing(1.0)
        assert bodies(other) == bodies(writer) == bodies(stale) == expected
        assert (await database_sync_to_async(collection_verify)(collection_id=collection.pk)).ok
        assert "Traceback" not in server.log()
    finally:
        server.stop()


async def test_after_a_restore_a_replica_pushes_again_what_the_server_lost(
    tmp_path: Path, tokens: list[str], collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)
    backup = tmp_path / "backup.jsonl"
    try:
        phone = await open_replica(server, tokens[0], "phone")
        phone.put("a", title="A1")
        phone.put("b", title="B")
        await phone.sync()
        await phone.disconnect()
        await database_sync_to_async(call_command)(
            "datagate_export", "acme/notes", str(backup), stdout=StringIO()
        )

        # After the backup: an edit, a new document and a delete, all synced.
        await reopen(server, phone)
        phone.put("a", title="A2")
        phone.put("c", title="C")
        phone.delete("b")
        await phone.sync()
        await phone.disconnect()
        newest = await server_documents(collection)
        assert newest == {"a": {"title": "A2"}, "c": {"title": "C"}}

        # The server is restored from the backup: it goes back in time.
        await database_sync_to_async(call_command)(
            "datagate_import", "acme/notes", str(backup), stdout=StringIO()
        )
        assert await server_documents(collection) == {"a": {"title": "A1"}, "b": {"title": "B"}}

        # The phone sees the new epoch: a reset snapshot; it pushes again what the server lost
        # (what the SDK does after a restore; this wire client does it by hand).
        await reopen(server, phone)
        await phone.connect()
        held = {k: v for k, v in phone.documents.items()} | dict(phone.tombstones)
        await phone.push()
        pulled = await phone.pull()
        assert pulled["reset"] is True
        snapshot: dict[str, Any] = {}
        for chunk in pulled["chunks"]:
            snapshot.update({d["_id"]: d for d in chunk["feed"]["changeSet"]})
            snapshot.update(chunk["feed"]["tombstoneMap"])
        for doc_id, version in held.items():
            if isinstance(version, dict):
                server_has = snapshot.get(doc_id)
                if (
                    not isinstance(server_has, dict)
                    or server_has["_modified"] < version["_modified"]
                ):
                    phone.documents[doc_id] = version
                    phone.journal[doc_id] = version
            elif not isinstance(snapshot.get(doc_id), int):
                phone.documents.pop(doc_id, None)
                phone.tombstones[doc_id] = version
                phone.journal[doc_id] = version
        await phone.disconnect()
        await reopen(server, phone)
        await phone.sync()

        assert await server_documents(collection) == newest
        assert bodies(phone) == newest
        assert (await database_sync_to_async(collection_verify)(collection_id=collection.pk)).ok
        assert "Traceback" not in server.log()
    finally:
        server.stop()
