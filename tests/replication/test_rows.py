"""The plain-row statements (replication/rows.py) give what the ORM gave, on both backends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from accounts.access import System
from replication.models import Collection, Document, Replica, ReplicaSession, Tombstone
from replication.rows import (
    BODY_NONE,
    BODY_TEXT,
    BODY_VALUE,
    collection_and_tenant,
    collection_last_seq_set,
    collection_row,
    replica_push_record,
    replica_session_insert,
    rows_by_ids,
    seq_range,
)
from replication.services.engine import batch_apply

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

T0 = 1_700_000_000_000
BODIES: list[dict[str, Any]] = [
    {"n": 1},
    {},
    {"text": "ünïcode ✓", "nested": {"list": [1, 2.5, None, True]}},
    {"quote": 'say "hi"\\'},
]


@pytest.fixture
def collection(tenant: Any) -> Collection:
    collection = Collection.objects.create(tenant=tenant, name="rows")
    docs = [
        {"_id": f"d{i}", "_revision": 1, "_modified": T0 + i, **body}
        for i, body in enumerate(BODIES)
    ]
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        feed={"changeSet": docs, "tombstoneMap": {"gone": T0}},
        origin="test",
    )
    return collection


def test_a_seq_range_reads_what_the_orm_reads(collection: Collection) -> None:
    window: dict[str, Any] = {
        "collection_id": collection.pk,
        "after_seq": 0,
        "up_to_seq": None,
        "limit": 100,
    }
    expected = [
        (d.seq, d.doc_id, d.modified, d.revision, d.origin, d.body)
        for d in Document.objects.filter(collection=collection).order_by("seq")
    ]
    assert seq_range(Document, **window, body=BODY_VALUE) == expected
    assert seq_range(Document, **window, body=BODY_NONE) == [row[:5] for row in expected]
    as_text = seq_range(Document, **window, body=BODY_TEXT)
    assert all(isinstance(row[5], str) for row in as_text)
    assert [json.loads(row[5]) for row in as_text] == [row[5] for row in expected]
    assert seq_range(Tombstone, **window) == [
        (t.seq, t.doc_id, t.deleted_at, t.revision, t.origin)
        for t in Tombstone.objects.filter(collection=collection)
    ]


def test_a_seq_range_keeps_its_bounds_and_limit(collection: Collection) -> None:
    seqs = [
        row[0]
        for row in seq_range(
            Document, collection_id=collection.pk, after_seq=0, up_to_seq=None, limit=100
        )
    ]
    assert len(seqs) == len(BODIES)
    first, last = seqs[0], seqs[-1]
    bounded = seq_range(
        Document, collection_id=collection.pk, after_seq=first, up_to_seq=last - 1, limit=100
    )
    assert [row[0] for row in bounded] == seqs[1:-1]
    limited = seq_range(Document, collection_id=collection.pk, after_seq=0, up_to_seq=None, limit=2)
    assert [row[0] for row in limited] == seqs[:2]


def test_the_collection_row_and_its_last_seq(collection: Collection) -> None:
    collection.refresh_from_db()
    assert collection_row(collection.pk, ("last_seq", "purge_horizon_ms")) == (
        collection.last_seq,
        collection.purge_horizon_ms,
    )
    assert collection_row(collection.pk, ("id",), for_update=True) == (collection.pk,)
    collection_last_seq_set(collection.pk, collection.last_seq + 5)
    collection.refresh_from_db()
    assert collection_row(collection.pk, ("last_seq",)) == (collection.last_seq,)
    with pytest.raises(Collection.DoesNotExist):
        collection_row(collection.pk + 1000, ("id",))


def test_rows_by_ids_reads_only_the_asked_ids_of_the_collection(
    collection: Collection, tenant: Any
) -> None:
    other = Collection.objects.create(tenant=tenant, name="other")
    batch_apply(
        actor=System("test"),
        collection_id=other.pk,
        feed={"changeSet": [{"_id": "d0", "_revision": 1, "_modified": T0}], "tombstoneMap": {}},
        origin="test",
    )
    ids = [f"d{i}" for i in range(len(BODIES))] + ["missing"]
    many = ids * 300  # more than one statement's worth of ids
    found = rows_by_ids(Document, ["doc_id", "revision"], collection.pk, many)
    assert sorted({row[0] for row in found}) == sorted(ids[:-1])
    assert rows_by_ids(Document, ["doc_id"], other.pk, ["d0", "d1"]) == [("d0",)]


def test_a_large_import_refreshes_the_planner_statistics(
    collection: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL plans the pull's page reads from the table's statistics: after a bulk load
    they must be refreshed, not left to autovacuum (bench/RESULTS.md, "plain-row statements").
    On SQLite `statistics_refresh` does nothing and the import is unchanged."""
    import io

    from django.db import connection

    from replication import transfer

    exported = io.StringIO()
    transfer.collection_export(collection_id=collection.pk, out=exported)
    monkeypatch.setattr(transfer, "ANALYZE_AFTER_ROWS", 1)
    report = transfer.collection_import(
        actor=System("test"),
        tenant=collection.tenant,
        name="imported",
        source=io.StringIO(exported.getvalue()),
    )
    assert report.documents == len(BODIES)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE relname = %s", [Document._meta.db_table]
            )
            (tuples,) = cursor.fetchone()
        assert tuples >= len(BODIES)


def _fields(instance: Any) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_the_collection_and_its_tenant_are_what_the_orm_reads(
    collection: Collection, tenant: Any
) -> None:
    """One statement for a Connect's collection and tenant: every field as the ORM converts
    it (created_at an aware datetime on both backends), the tenant cached on the collection,
    the tenant alone for a name it has no collection of, nothing for an unknown tenant."""
    expected = Collection.objects.select_related("tenant").get(pk=collection.pk)
    found, found_tenant = collection_and_tenant(tenant.slug, "rows")
    assert found is not None
    assert found_tenant is not None
    assert _fields(found) == _fields(expected)
    assert _fields(found_tenant) == _fields(expected.tenant)
    assert found.tenant is found_tenant
    assert found.created_at.tzinfo is not None
    assert found._state.adding is False
    assert found._state.db == expected._state.db
    missing, only_tenant = collection_and_tenant(tenant.slug, "ROWS")  # names are exact
    assert missing is None
    assert only_tenant is not None
    assert _fields(only_tenant) == _fields(expected.tenant)
    assert collection_and_tenant("no-such-tenant", "rows") == (None, None)
    # An instance read this way saves like one the ORM read.
    found.tombstone_ttl_days = 9
    found.save(update_fields=["tombstone_ttl_days"])
    assert Collection.objects.get(pk=collection.pk).tombstone_ttl_days == 9


def test_a_session_record_is_what_the_orm_created(collection: Collection, make_user: Any) -> None:
    replica = Replica.objects.create(
        collection=collection, user=make_user("sam"), replica_id="r1", name="phone"
    )
    created = ReplicaSession.objects.create(replica=replica, address="1.2.3.4", client_version="v")
    started = created.started_at
    replica_session_insert(replica.pk, started=started, address="1.2.3.4", client_version="v")
    older, newer = ReplicaSession.objects.filter(replica=replica).order_by("pk")
    assert newer.pk != older.pk
    assert {k: v for k, v in _fields(newer).items() if k != "id"} == {
        k: v for k, v in _fields(older).items() if k != "id"
    }
    assert newer.ended_at is None
    assert newer.started_at == started


def test_a_push_record_is_what_the_orm_update_wrote(collection: Collection, make_user: Any) -> None:
    user = make_user("pia")
    ours, theirs = (
        Replica.objects.create(collection=collection, user=user, replica_id=name)
        for name in ("ours", "theirs")
    )
    seen = timezone.now()
    for applied, rejected, last_seq in ((3, 1, 40), (2, 0, None), (0, 5, 41)):
        replica_push_record(
            ours.pk, applied=applied, rejected=rejected, last_seq=last_seq, seen=seen
        )
        updates: dict[str, Any] = {
            "pushed_count": F("pushed_count") + applied,
            "rejected_count": F("rejected_count") + rejected,
            "last_seen": seen,
        }
        if last_seq is not None:
            updates["last_pushed_seq"] = last_seq
        Replica.objects.filter(pk=theirs.pk).update(**updates)
        ours.refresh_from_db()
        theirs.refresh_from_db()
        fields = ("pushed_count", "rejected_count", "last_seen", "last_pushed_seq")
        assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
    assert ours.last_pushed_seq == 41
    assert ours.pushed_count == 5


def test_no_table_keeps_a_lone_collection_index_beside_its_unique_one() -> None:
    """Migration 0012: the unique (collection, ...) indexes serve lookups by collection; a
    lone `collection_id` index only cost writes and misled PostgreSQL's planner."""
    from importlib import import_module

    from django.db import connection

    migration = import_module("replication.migrations.0012_no_lone_collection_indexes")
    for table in migration.TABLES:
        assert migration.lone_collection_indexes(connection, table) == [], table
