"""End to end with the Python replica SDK (`sdk/datagate_replica`) and a real daphne process:
tombstone GC against a replica that stayed offline, and a restore from an older export."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from datagate_replica import AsyncReplica
from django.core.management import call_command

from replication.maintenance import DAY_MS, tombstones_collect
from replication.selectors import collection_state
from replication.services.engine import now_ms
from replication.verify import collection_verify
from tests.support.server_processes import DaphneServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def token(collection: Any, member: Any, issue_token: Any) -> str:
    return str(issue_token(member("ann", "writer"), "read write"))


def replica(server: DaphneServer, token: str, tmp_path: Path, name: str) -> AsyncReplica:
    return AsyncReplica(
        server.ws_url, "acme", "notes", token, path=tmp_path / f"{name}.sqlite3", name=name
    )


async def server_documents(collection: Any) -> dict[str, Any]:
    state = await database_sync_to_async(collection_state)(collection_id=collection.pk)
    return {doc_id: row["body"] for doc_id, row in state["documents"].items()}


def local_documents(replica: AsyncReplica) -> dict[str, Any]:
    return {
        doc["_id"]: {k: v for k, v in doc.items() if not k.startswith("_")}
        for doc in replica.list()
    }


async def test_sdk_replica_offline_past_the_ttl_ends_equal_to_the_server(
    tmp_path: Path, token: str, collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)
    writer = replica(server, token, tmp_path, "writer")
    stale = replica(server, token, tmp_path, "stale")
    try:
        for name in ("a", "b", "c"):
            writer.put(name, title=name.upper())
        await writer.sync()
        await stale.sync()
        assert local_documents(stale) == await server_documents(collection)

        stale.put("a", title="edited offline")  # before the delete below, never synced
        writer.delete("a")
        writer.delete("b")
        await writer.sync()
        # GC as it would run more than the TTL later: both tombstones are collected.
        later = now_ms() + collection.effective_tombstone_ttl_days * DAY_MS + 60_000
        report = await database_sync_to_async(tombstones_collect)(
            collection_id=collection.pk, at_ms=later
        )
        assert report.collected == 2

        session = await stale.sync()
        assert [(r.version.doc_id, r.code) for r in session.rejected] == [("a", "DG-7001")]
        # Repaired by range checks (docs/protocol.md, "Ranges"), not by a reset snapshot.
        assert session.reset is False
        assert {(d.doc_id, d.kind) for d in session.differences} == {
            ("a", "extra"),  # pending here: pushed, and refused behind the purge horizon
            ("b", "extra"),  # its delete was collected: dropped here
        }
        expected = {"c": {"title": "C"}}
        assert await server_documents(collection) == expected
        assert local_documents(stale) == expected
        await writer.sync()
        assert local_documents(writer) == expected
        assert (await database_sync_to_async(collection_verify)(collection_id=collection.pk)).ok
        assert "Traceback" not in server.log()
    finally:
        await writer.close()
        await stale.close()
        server.stop()


async def test_sdk_replica_pushes_again_what_a_restore_lost(
    tmp_path: Path, token: str, collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)
    phone = replica(server, token, tmp_path, "phone")
    backup = tmp_path / "backup.jsonl"
    try:
        phone.put("a", title="A1")
        phone.put("b", title="B")
        await phone.sync()
        await database_sync_to_async(call_command)(
            "datagate_export", "acme/notes", str(backup), stdout=StringIO()
        )
        phone.put("a", title="A2")
        phone.put("c", title="C")
        phone.delete("b")
        await phone.sync()
        newest = await server_documents(collection)
        assert newest == {"a": {"title": "A2"}, "c": {"title": "C"}}

        await database_sync_to_async(call_command)(
            "datagate_import", "acme/notes", str(backup), stdout=StringIO()
        )
        assert await server_documents(collection) == {"a": {"title": "A1"}, "b": {"title": "B"}}

        session = await phone.sync()
        # Repaired by range checks: only the differences moved.
        assert session.reset is False
        assert {(d.doc_id, d.kind) for d in session.differences} == {
            ("a", "newer"),  # pushed again
            ("b", "newer"),  # its delete, pushed again
            ("c", "extra"),  # the server lost it: pushed again after a restore
        }
        assert session.fetched == 0
        assert await server_documents(collection) == newest
        assert local_documents(phone) == newest
        assert (await database_sync_to_async(collection_verify)(collection_id=collection.pk)).ok
        assert "Traceback" not in server.log()
    finally:
        await phone.close()
        server.stop()
