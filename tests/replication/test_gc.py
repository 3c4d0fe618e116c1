"""Tombstone GC, the purge horizon, and why a collected delete never comes back.

Marked `storage`: `make test` runs these once on SQLite and again on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.access import System
from core.errors import ErrorCode
from replication.maintenance import DAY_MS, tombstones_collect, tombstones_collect_all
from replication.models import Collection, Document, Replica, Tombstone
from replication.protocol.markers import PullStart
from replication.selectors import changes_since, collection_state
from replication.services.engine import batch_apply, collection_get_or_create, now_ms
from replication.services.replicas import replica_acked, replica_connected, replica_disconnected
from tests.support.simulated_replica import SimReplica

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

NOW = now_ms()
OLD = NOW - 60 * DAY_MS  # two TTLs ago (default TTL: 30 days)
RECENT = NOW - 1 * DAY_MS


def doc(doc_id: str, modified: int, revision: int = 1, **fields: Any) -> dict[str, Any]:
    return {"_id": doc_id, "_revision": revision, "_modified": modified, **fields}


def apply(collection: Collection, origin: str = "writer", **feed: Any) -> Any:
    return batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin=origin)


def codes(result: Any) -> dict[str, str]:
    return {r["id"]: r["code"] for r in result.receipt()["rejected"]}


def test_gc_removes_only_expired_tombstones_and_moves_the_horizon(collection: Collection) -> None:
    apply(collection, changeSet=[doc("keep", OLD)])
    apply(collection, tombstoneMap={"old-1": OLD, "old-2": OLD + 5})  # seqs 2, 3
    apply(collection, tombstoneMap={"young": RECENT})  # seq 4
    report = tombstones_collect(collection_id=collection.pk)
    assert report.collected == 2
    assert (report.purge_seq_before, report.purge_seq_after) == (0, 3)
    assert (report.horizon_ms_before, report.horizon_ms_after) == (0, OLD + 5)
    assert set(Tombstone.objects.values_list("doc_id", flat=True)) == {"young"}
    assert Document.objects.filter(doc_id="keep").exists()
    collection.refresh_from_db()
    assert (collection.purge_seq, collection.purge_horizon_ms, collection.last_seq) == (
        3,
        OLD + 5,
        4,
    )
    assert tombstones_collect(collection_id=collection.pk).collected == 0


def test_gc_dry_run_reports_but_changes_nothing(collection: Collection) -> None:
    apply(collection, tombstoneMap={"old": OLD})
    report = tombstones_collect(collection_id=collection.pk, dry_run=True)
    assert (report.collected, report.purge_seq_after) == (1, 1)
    assert "would collect 1 tombstone" in report.line()
    collection.refresh_from_db()
    assert (collection.purge_seq, collection.purge_horizon_ms) == (0, 0)
    assert Tombstone.objects.count() == 1


def test_gc_honours_the_collections_own_ttl(tenant: Any) -> None:
    short, _ = collection_get_or_create(tenant=tenant, name="short")
    short.tombstone_ttl_days = 1
    short.save(update_fields=["tombstone_ttl_days"])
    default, _ = collection_get_or_create(tenant=tenant, name="default")
    for target in (short, default):
        apply(target, tombstoneMap={"gone": NOW - 2 * DAY_MS})
    reports = {r.collection: r for r in tombstones_collect_all()}
    assert reports["acme/short"].collected == 1
    assert reports["acme/default"].collected == 0


def test_gc_never_moves_the_horizon_backwards(collection: Collection) -> None:
    apply(collection, tombstoneMap={"a": OLD})  # seq 1
    # As after an import: the horizon is already past this tombstone.
    Collection.objects.filter(pk=collection.pk).update(
        purge_seq=50, last_seq=60, purge_horizon_ms=OLD + DAY_MS
    )
    report = tombstones_collect(collection_id=collection.pk)
    assert report.collected == 1
    assert (report.purge_seq_after, report.horizon_ms_after) == (50, OLD + DAY_MS)


def test_gc_waits_for_every_connected_replica_to_acknowledge_a_tombstone(
    collection: Collection, make_user: Any
) -> None:
    user = make_user("bob")
    apply(collection, tombstoneMap={"a": OLD})  # seq 1
    apply(collection, tombstoneMap={"b": OLD})  # seq 2
    live = replica_connected(collection_id=collection.pk, replica_id="live", user_id=user.pk)
    replica_acked(replica_pk=live.pk, seq=1)
    gone = replica_connected(collection_id=collection.pk, replica_id="gone", user_id=user.pk)
    replica_disconnected(replica_pk=gone.pk)  # offline: it gets a reset instead
    crashed = replica_connected(collection_id=collection.pk, replica_id="crashed", user_id=user.pk)
    # Left online by a killed process, not seen for longer than the TTL: it does not count.
    Replica.objects.filter(pk=crashed.pk).update(last_seen=timezone.now() - timedelta(days=31))

    report = tombstones_collect(collection_id=collection.pk)
    assert (report.collected, report.held_back, report.purge_seq_after) == (1, 1, 1)
    assert "1 expired kept until every online replica has acknowledged them" in report.line()
    assert list(Tombstone.objects.values_list("doc_id", flat=True)) == ["b"]
    replica_acked(replica_pk=live.pk, seq=2)
    assert tombstones_collect(collection_id=collection.pk).collected == 1
    assert not Tombstone.objects.exists()


def test_a_delete_of_an_unknown_id_behind_the_horizon_is_processed_and_stores_nothing(
    collection: Collection,
) -> None:
    apply(collection, tombstoneMap={"a": OLD + 10})
    tombstones_collect(collection_id=collection.pk)
    result = apply(collection, tombstoneMap={"b": OLD})
    assert result.receipt() == {"added": [], "removed": ["b"], "rejected": []}
    assert result.applied == 0
    assert Tombstone.objects.count() == 0


def test_a_write_of_an_unknown_id_behind_the_horizon_is_refused_with_its_code(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("x", OLD)])
    apply(collection, tombstoneMap={"x": OLD + 1000})
    tombstones_collect(collection_id=collection.pk)
    stale = apply(collection, origin="stale", changeSet=[doc("x", OLD), doc("x2", OLD + 1000)])
    assert codes(stale) == {"x": "DG-7001", "x2": "DG-7001"}
    assert stale.receipt()["added"] == []
    assert "purge horizon" in stale.rejected[0].error.text
    assert collection_state(collection_id=collection.pk)["documents"] == {}
    again = apply(collection, origin="stale", changeSet=[doc("x", OLD)])
    assert codes(again) == {"x": ErrorCode.PURGED_DELETE.code}


def test_the_horizon_refuses_nothing_newer_and_nothing_the_server_still_holds(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("live", OLD)])
    apply(collection, tombstoneMap={"gone": OLD + 1000})
    tombstones_collect(collection_id=collection.pk)
    result = apply(
        collection,
        changeSet=[doc("new", OLD + 1001), doc("live", OLD + 1, revision=2, v=2)],
        tombstoneMap={"unknown-old": OLD},
    )
    assert result.receipt() == {
        "added": ["new", "live"],
        "removed": ["unknown-old"],
        "rejected": [],
    }
    state = collection_state(collection_id=collection.pk)
    assert set(state["documents"]) == {"new", "live"}
    assert state["documents"]["live"]["body"] == {"v": 2}
    # A delete behind the horizon of an id the server does not hold is already done.
    assert state["tombstones"] == {}


def test_a_replica_offline_past_the_ttl_cannot_bring_back_a_deleted_document(
    collection: Collection,
) -> None:
    """The safety rule, at the service level: push, pull_start and changes_since."""
    writer, stale, other = SimReplica("writer"), SimReplica("stale"), SimReplica("other")
    writer.write("a", OLD, title="A")
    writer.write("b", OLD, title="B")
    writer.write("c", OLD, title="C")
    writer.sync(collection)
    stale.sync(collection)
    other.sync(collection)
    assert (
        stale.state()
        == other.state()
        == {"a": {"title": "A"}, "b": {"title": "B"}, "c": {"title": "C"}}
    )

    # Offline, the stale replica edits "a" (before the delete below) and keeps "b" as it was.
    stale.write("a", OLD + 3_600_000, title="A edited offline")
    # Meanwhile "a" and "b" are deleted, "d" is written, and the other replica syncs.
    writer.delete("a", OLD + DAY_MS)
    writer.delete("b", OLD + DAY_MS)
    writer.write("d", OLD + 2 * DAY_MS, title="D")
    writer.sync(collection)
    other.sync(collection)
    assert set(other.state()) == {"c", "d"}

    # More than the TTL later, GC collects both tombstones.
    report = tombstones_collect(collection_id=collection.pk)
    assert report.collected == 2
    assert Tombstone.objects.count() == 0

    # The stale replica reconnects: its edit is refused, its pull is a reset snapshot.
    stale.sync(collection)
    assert stale.receipts[-1]["rejected"] == [
        {"id": "a", "code": "DG-7001", "error": stale.receipts[-1]["rejected"][0]["error"]}
    ]
    assert stale.last_start is PullStart.RESET_HORIZON
    # And a client that pushes the old version of "b" it still holds gets the same answer.
    old_b = apply(collection, origin="stale", changeSet=[doc("b", OLD, title="B")])
    assert codes(old_b) == {"b": "DG-7001"}

    server = {
        k: v["body"] for k, v in collection_state(collection_id=collection.pk)["documents"].items()
    }
    assert server == {"c": {"title": "C"}, "d": {"title": "D"}}
    assert stale.state() == server
    other.sync(collection)
    assert other.last_start is PullStart.FROM_MARKER
    assert other.state() == server
    assert changes_since(collection_id=collection.pk, after_seq=0, limit=100)[0].doc_id == "c"


def test_datagate_gc_reports_what_it_removed_and_where_each_horizon_moved(
    collection: Collection, tenant: Any
) -> None:
    other, _ = collection_get_or_create(tenant=tenant, name="other")
    apply(collection, tombstoneMap={"old": OLD, "young": RECENT})
    apply(other, tombstoneMap={"old": OLD})
    dry = StringIO()
    call_command("datagate_gc", "--dry-run", "--collection", "acme/notes", stdout=dry)
    assert "acme/notes: would collect 1 tombstone" in dry.getvalue()
    assert "acme/other" not in dry.getvalue()
    assert Tombstone.objects.count() == 3
    out = StringIO()
    call_command("datagate_gc", stdout=out)
    text = out.getvalue()
    assert "acme/notes: collected 1 tombstone(s)" in text
    assert "purge_seq 0 -> 1" in text
    assert "acme/other: collected 1 tombstone(s)" in text
    assert Tombstone.objects.count() == 1


def test_datagate_gc_refuses_an_unknown_collection() -> None:
    with pytest.raises(CommandError, match="no collection"):
        call_command("datagate_gc", "--collection", "acme/missing")
    with pytest.raises(CommandError, match="tenant/collection"):
        call_command("datagate_gc", "--collection", "missing")
