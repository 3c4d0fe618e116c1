"""Export and import of a collection, and a restore from an older export losing nothing.

Marked `storage`: `make test` runs these once on SQLite and again on PostgreSQL.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from accounts.access import System
from replication.maintenance import DAY_MS, tombstones_collect
from replication.models import Collection, JournalEntry, MaintenanceRun
from replication.protocol.markers import PullStart
from replication.selectors import collection_state
from replication.services.engine import batch_apply, collection_get_or_create, now_ms
from replication.transfer import collection_export
from replication.verify import collection_verify
from tests.support.simulated_replica import SimReplica

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

T = now_ms() - 10 * DAY_MS
OLD = now_ms() - 60 * DAY_MS


def server_documents(collection: Collection) -> dict[str, Any]:
    state = collection_state(collection_id=collection.pk)
    return {doc_id: row["body"] for doc_id, row in state["documents"].items()}


def export_text(collection: Collection) -> str:
    out = StringIO()
    collection_export(collection_id=collection.pk, out=out)
    return out.getvalue()


def test_export_writes_a_header_then_every_document_and_tombstone(
    collection: Collection, tmp_path: Path
) -> None:
    feed = {
        "changeSet": [{"_id": "a", "_revision": 3, "_modified": T, "_origin": "r1", "n": 1}],
        "tombstoneMap": {"b": T + 1},
    }
    batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin="r1")
    target = tmp_path / "notes.jsonl"
    out = StringIO()
    call_command("datagate_export", "acme/notes", str(target), stdout=out)
    assert "acme/notes: exported 1 documents and 1 tombstones at seq 2" in out.getvalue()
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    header = lines[0]
    assert header["kind"] == "header"
    assert header["format"] == "datagate-collection"
    assert (header["tenant"], header["collection"], header["last_seq"]) == ("acme", "notes", 2)
    assert header["epoch"] == collection.epoch
    assert (header["documents"], header["tombstones"]) == (1, 1)
    assert lines[1] == {
        "kind": "document",
        "seq": 1,
        "doc": {"n": 1, "_id": "a", "_revision": 3, "_modified": T, "_origin": "r1"},
    }
    assert lines[2] == {
        "kind": "tombstone",
        "seq": 2,
        "id": "b",
        "deleted": T + 1,
        "revision": 1,
        "origin": "r1",
    }
    assert not (tmp_path / "notes.jsonl.partial").exists()


def test_import_restores_the_content_with_a_new_epoch_and_a_counter_that_only_moves_forward(
    collection: Collection, tenant: Any, tmp_path: Path
) -> None:
    feed = {
        "changeSet": [{"_id": f"d{n}", "_revision": 1, "_modified": T, "v": n} for n in range(5)],
        "tombstoneMap": {"gone": T},
    }
    batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin="r1")
    Collection.objects.filter(pk=collection.pk).update(tombstone_ttl_days=9)
    exported = collection_state(collection_id=collection.pk)
    path = tmp_path / "export.jsonl"
    path.write_text(export_text(collection))
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        feed={"changeSet": [{"_id": "later", "_revision": 1, "_modified": T + 5}]},
        origin="r1",
    )
    collection.refresh_from_db()
    before = (collection.last_seq, collection.epoch)

    out = StringIO()
    call_command("datagate_import", "acme/notes", str(path), stdout=out)
    assert "acme/notes: restored 5 documents and 1 tombstones" in out.getvalue()
    collection.refresh_from_db()
    assert collection_state(collection_id=collection.pk) == exported
    assert collection.epoch != before[1]
    assert collection.last_seq == before[0] + 6
    assert collection.purge_seq == collection.last_seq
    assert collection.tombstone_ttl_days == 9
    assert JournalEntry.objects.filter(message_id="datagate-import").count() == 6
    assert collection_verify(collection_id=collection.pk).ok
    run = MaintenanceRun.objects.get()
    assert (run.job, run.ok) == ("import", True)

    # Into another, new collection: the counter starts above the exported one.
    call_command("datagate_import", "acme/copy", str(path), stdout=StringIO())
    copy = Collection.objects.get(name="copy")
    assert collection_state(collection_id=copy.pk) == exported
    assert copy.last_seq == 6 + 6
    assert collection_verify(collection_id=copy.pk).ok


def test_a_restore_from_an_older_export_loses_nothing_a_replica_holds(
    collection: Collection, tmp_path: Path
) -> None:
    writer, phone, stale = SimReplica("writer"), SimReplica("phone"), SimReplica("stale")
    # Before the export: "x" is written, the stale replica syncs it and goes offline; "x" is
    # deleted and its tombstone collected, so the export knows it only as the purge horizon.
    writer.write("x", OLD, title="X")
    writer.sync(collection)
    stale.sync(collection)
    writer.delete("x", OLD + 1)
    writer.write("a", T, title="A1")
    writer.write("b", T, title="B")
    writer.write("c", T, title="C")
    writer.sync(collection)
    assert tombstones_collect(collection_id=collection.pk).collected == 1
    phone.sync(collection)
    backup = tmp_path / "backup.jsonl"
    call_command("datagate_export", "acme/notes", str(backup), stdout=StringIO())

    # After the export: more writes, which the phone syncs.
    writer.write("a", T + 10, title="A2")
    writer.write("d", T + 10, title="D")
    writer.delete("b", T + 10)
    writer.sync(collection)
    phone.sync(collection)
    newest = server_documents(collection)
    assert newest == {"a": {"title": "A2"}, "c": {"title": "C"}, "d": {"title": "D"}}
    assert phone.state() == newest

    # The server is restored from the older export: it went back in time.
    call_command("datagate_import", "acme/notes", str(backup), stdout=StringIO())
    assert server_documents(collection) == {
        "a": {"title": "A1"},
        "b": {"title": "B"},
        "c": {"title": "C"},
    }

    # The phone notices (new epoch), takes the snapshot, and pushes again what the server lost.
    phone.sync(collection)
    assert phone.last_start is PullStart.RESET_RESTORE
    assert server_documents(collection) == newest
    assert phone.state() == newest
    # A replica that was offline since before the collected delete cannot bring "x" back.
    stale.sync(collection)
    assert any(r["rejected"] for r in stale.receipts)
    assert server_documents(collection) == newest
    assert stale.state() == newest
    writer.sync(collection)
    assert writer.state() == newest
    assert collection_verify(collection_id=collection.pk).ok


def header_line(**changes: Any) -> str:
    header = {
        "kind": "header",
        "format": "datagate-collection",
        "version": 1,
        "last_seq": 3,
        "purge_horizon_ms": 0,
        "tombstone_ttl_days": None,
    }
    header.update(changes)
    return json.dumps(header)


DOC = json.dumps(
    {"kind": "document", "seq": 1, "doc": {"_id": "a", "_revision": 1, "_modified": 5}}
)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "line 1: the file is empty"),
        ("not json\n", "line 1: not JSON"),
        (DOC + "\n", "line 1: the first line must be the export header"),
        (header_line(format="other") + "\n", "format 'other' is not"),
        (header_line(version=2) + "\n", "version 2 is not supported"),
        (header_line(last_seq="3") + "\n", "last_seq must be an integer"),
        (header_line() + "\n" + DOC + "\n{oops\n", "line 3: not JSON"),
        (header_line() + "\n" + DOC.replace('"_revision": 1', '"_revision": 0'), "DG-4003"),
        (header_line() + "\n" + DOC + "\n" + DOC + "\n", "line 3: 'a' appears again"),
        (header_line() + '\n{"kind": "note", "seq": 1}\n', "unknown kind 'note'"),
        (header_line() + '\n{"kind": "tombstone", "seq": 2, "id": "t"}\n', "deleted must be"),
        (header_line(documents=2) + "\n" + DOC + "\n", "the header counts 2 documents"),
    ],
)
def test_import_refuses_a_bad_file_whole_and_says_which_line(
    collection: Collection, tmp_path: Path, content: str, says: str
) -> None:
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        feed={"changeSet": [{"_id": "keep", "_revision": 1, "_modified": T}]},
        origin="r1",
    )
    collection.refresh_from_db()
    before = (collection.last_seq, collection.epoch, collection_state(collection_id=collection.pk))
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CommandError, match="DG-7003") as raised:
        call_command("datagate_import", "acme/notes", str(path), stdout=StringIO())
    assert says in str(raised.value)
    assert "nothing was imported" in str(raised.value)
    collection.refresh_from_db()
    after = (collection.last_seq, collection.epoch, collection_state(collection_id=collection.pk))
    assert after == before
    run = MaintenanceRun.objects.get()
    assert (run.job, run.ok) == ("import", False)
    assert "DG-7002" in run.error


def test_import_and_export_refuse_unknown_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no collection 'acme/nope'"):
        call_command("datagate_export", "acme/nope", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="tenant/collection"):
        call_command("datagate_export", "nope", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="no tenant 'nobody'"):
        call_command("datagate_import", "nobody/notes", str(tmp_path / "x"))


def test_import_needs_the_file(tenant: Any, tmp_path: Path) -> None:
    collection_get_or_create(tenant=tenant, name="notes")
    with pytest.raises(CommandError, match="no file"):
        call_command("datagate_import", "acme/notes", str(tmp_path / "missing.jsonl"))
