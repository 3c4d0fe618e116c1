"""Range checks end to end: a real daphne process and the Python SDK (`datagate-replica`).

A synced replica verifies equal; a replica whose local file lost rows finds and repairs the
differences; after a restore from an older export, replicas repair by difference instead of
dropping what they hold; a user whose key rules hide documents compares only what they read.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from datagate_replica import AsyncReplica
from datagate_replica.cli import main as replica_cli
from django.core.management import call_command

from accounts.services import key_rule_add
from replication.models import Replica
from replication.selectors import collection_state
from tests.support.server_processes import DaphneServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def token(collection: Any, member: Any, issue_token: Any) -> str:
    return str(issue_token(member("ann", "writer"), "read write"))


def open_replica(server: DaphneServer, token: str, tmp_path: Path, name: str) -> AsyncReplica:
    return AsyncReplica(
        server.ws_url, "acme", "notes", token, path=tmp_path / f"{name}.sqlite3", name=name
    )


async def server_state(collection: Any) -> dict[str, Any]:
    state = await database_sync_to_async(collection_state)(collection_id=collection.pk)
    return {
        "documents": {i: row["body"] for i, row in state["documents"].items()},
        "tombstones": set(state["tombstones"]),
    }


def local_state(replica: AsyncReplica) -> dict[str, Any]:
    state = replica.state()
    return {
        "documents": {i: row["body"] for i, row in state["documents"].items()},
        "tombstones": set(state["tombstones"]),
    }


async def test_a_synced_replica_verifies_equal_and_the_server_records_it(
    tmp_path: Path, token: str, collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)
    phone = open_replica(server, token, tmp_path, "phone")
    try:
        for i in range(300):
            phone.put(f"n{i}", title=f"note {i}")
        phone.delete("n7")
        await phone.sync()
        report = await phone.verify()
        assert (report.equal, report.differences, report.range_rounds) == (True, [], 1)
        replica = await database_sync_to_async(Replica.objects.get)(name="phone")
        assert replica.verified_at is not None
        assert "Traceback" not in server.log()
    finally:
        await phone.close()
        server.stop()


async def test_a_replica_whose_file_lost_rows_finds_and_repairs_the_differences(
    tmp_path: Path, token: str, collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)
    phone = open_replica(server, token, tmp_path, "phone")
    laptop = open_replica(server, token, tmp_path, "laptop")
    try:
        for i in range(200):
            phone.put(f"n{i}", title=f"note {i}")
        phone.delete("n3")
        await phone.sync()
        await laptop.sync()
        laptop.put("n5", title="edited on the laptop")
        await laptop.sync()
        # The phone's file loses rows and gains one nobody wrote (not in its journal).
        with sqlite3.connect(tmp_path / "phone.sqlite3") as raw:
            raw.execute("DELETE FROM documents WHERE doc_id IN ('n1', 'n2')")
            raw.execute("DELETE FROM tombstones WHERE doc_id = 'n3'")
            raw.execute("INSERT INTO documents VALUES ('ghost', '{}', 1, 1, 'nobody')")
        phone.store.close()
        phone = open_replica(server, token, tmp_path, "phone")

        found = await phone.verify()
        assert found.equal is False
        assert {(d.doc_id, d.kind) for d in found.differences} == {
            ("n1", "missing"),
            ("n2", "missing"),
            ("n3", "missing"),
            ("n5", "stale"),
            ("ghost", "extra"),
        }
        output = io.StringIO()
        with redirect_stdout(output):
            status = await asyncio.to_thread(
                replica_cli,
                [
                    "--url", server.ws_url, "--tenant", "acme", "--collection", "notes",
                    "--token", token, "--file", str(tmp_path / "phone.sqlite3"),
                    "verify", "--repair",
                ],
            )  # fmt: skip
        phone.store.close()
        assert status == 0, output.getvalue()
        assert "repaired 5 difference(s); now equal" in output.getvalue()
        phone = open_replica(server, token, tmp_path, "phone")
        assert local_state(phone) == await server_state(collection)
        assert (await phone.verify()).equal is True
        assert "Traceback" not in server.log()
    finally:
        await phone.close()
        await laptop.close()
        server.stop()


async def test_after_a_restore_from_an_older_export_replicas_repair_only_the_differences(
    tmp_path: Path, token: str, collection: Any
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)
    phone = open_replica(server, token, tmp_path, "phone")
    laptop = open_replica(server, token, tmp_path, "laptop")
    backup = tmp_path / "backup.jsonl"
    try:
        for i in range(500):
            phone.put(f"n{i}", title=f"note {i}")
        await phone.sync()
        await laptop.sync()
        await database_sync_to_async(call_command)(
            "datagate_export", "acme/notes", str(backup), stdout=StringIO()
        )
        phone.put("n1", title="after the backup")
        phone.put("new", title="after the backup")
        phone.delete("n2")
        await phone.sync()
        await laptop.sync()
        newest = await server_state(collection)

        await database_sync_to_async(call_command)(
            "datagate_import", "acme/notes", str(backup), stdout=StringIO()
        )
        # Both replicas reconnect; neither drops what it holds for a snapshot. The phone
        # pushes back the three changes the restore lost; the laptop then finds itself equal.
        report = await phone.sync()
        assert (report.reset, report.repaired, report.fetched) == (False, 3, 0)
        assert {(d.doc_id, d.kind) for d in report.differences} == {
            ("n1", "newer"),
            ("n2", "newer"),
            ("new", "extra"),
        }
        report = await laptop.sync()
        assert (report.reset, report.repaired, report.fetched, report.pulled) == (False, 0, 0, 0)
        assert await server_state(collection) == newest
        assert local_state(phone) == local_state(laptop) == newest
        assert (await phone.verify()).equal
        assert (await laptop.verify()).equal
        assert "Traceback" not in server.log()
    finally:
        await phone.close()
        await laptop.close()
        server.stop()


async def test_ranges_of_a_user_with_key_rules_cover_only_what_they_may_read(
    tmp_path: Path, token: str, collection: Any, member: Any, issue_token: Any, tenant: Any
) -> None:
    await database_sync_to_async(key_rule_add)(
        tenant=tenant, collection_name="notes", pattern="private/*", effect="deny",
        actions=["read"], user=None, position=1,
    )  # fmt: skip
    reader = await database_sync_to_async(member)("rita", "reader")
    reader_token = await database_sync_to_async(issue_token)(reader, "read")
    server = DaphneServer.start(tmp_path=tmp_path)
    writer = open_replica(server, token, tmp_path, "writer")
    rita = open_replica(server, str(reader_token), tmp_path, "rita")
    try:
        for i in range(50):
            writer.put(f"pub/{i}", title="public")
            writer.put(f"private/{i}", title="secret")
        await writer.sync()
        await rita.sync()
        assert len(rita.list()) == 50
        report = await rita.verify()
        assert report.equal is True
        # A private document she was never sent is no difference of hers; a public one is.
        with sqlite3.connect(tmp_path / "rita.sqlite3") as raw:
            raw.execute("DELETE FROM documents WHERE doc_id = 'pub/1'")
        found = await rita.verify(repair=True)
        assert [(d.doc_id, d.kind) for d in found.differences] == [("pub/1", "missing")]
        assert found.equal is True
        assert rita.get("pub/1") is not None
        assert all(not d["_id"].startswith("private/") for d in rita.list())
    finally:
        await writer.close()
        await rita.close()
        server.stop()
