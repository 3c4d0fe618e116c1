"""The server's range summaries: every write keeps them equal to a recomputation from the rows.

Marked `storage`: `make test` runs these once on SQLite and again on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from typing import Any

import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.access import System
from replication.maintenance import DAY_MS, tombstones_collect
from replication.models import Collection, RangeBucket
from replication.protocol.ranges import (
    BUCKETS,
    GROUP_SHIFT,
    Ask,
    BucketTable,
    Header,
    Summary,
    bucket_of,
    hash_from_wire,
    hash_to_wire,
    split,
    version_hash,
)
from replication.ranges import (
    range_answer,
    range_fetch,
    range_headers,
    ranges_mismatches,
    ranges_rebuild,
    ranges_recompute,
    ranges_stored,
    ranges_table,
)
from replication.services.documents import document_delete, document_put
from replication.services.engine import batch_apply, batch_apply_many
from replication.transfer import collection_export, collection_import
from replication.verify import collection_verify

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

T0 = 1_700_000_000_000
ACTOR = System("test")
EXAMPLES = int(os.environ.get("DATAGATE_HYPOTHESIS_EXAMPLES", "25"))


def assert_summaries_match(collection: Collection) -> None:
    assert ranges_mismatches(collection.pk) == []
    stored = ranges_stored(collection.pk)
    assert stored.buckets == ranges_recompute(collection.pk).grouped(GROUP_SHIFT).buckets
    assert len(stored.buckets) <= BUCKETS >> GROUP_SHIFT


def test_hashes_are_the_documented_functions() -> None:
    # The SDK and other clients implement these from docs/protocol.md: pin them.
    assert bucket_of("a") == zlib.crc32(b"a") >> 20 == 0xE8B
    digest = hashlib.blake2b(b"a" + struct.pack(">qqB", 1, 5, 0), digest_size=8).digest()
    assert version_hash("a", 1, 5, False) == int.from_bytes(digest, "big")
    assert hash_from_wire(hash_to_wire(2**64 - 1)) == 2**64 - 1
    assert list(split(0, BUCKETS, 16))[1] == (256, 512)
    assert list(split(10, 13, 16)) == [(10, 11), (11, 12), (12, 13)]


def test_writes_deletes_and_overwrites_keep_the_summaries(collection: Collection) -> None:
    feed = {"changeSet": [{"_id": f"d{i}", "_revision": 1, "_modified": T0} for i in range(50)]}
    batch_apply(actor=ACTOR, collection_id=collection.pk, feed=feed, origin="r")
    assert ranges_stored(collection.pk).total().count == 50
    batch_apply(
        actor=ACTOR,
        collection_id=collection.pk,
        feed={"tombstoneMap": {"d1": T0 + 1, "zz": T0 + 1}},
        origin="r",
    )
    document_put(actor=ACTOR, collection_id=collection.pk, doc_id="d2", body={"x": 1}, origin="srv")
    document_delete(actor=ACTOR, collection_id=collection.pk, doc_id="d3", origin="srv")
    # tombstones count: a delete replaces a document, an unknown id's delete adds one
    assert ranges_stored(collection.pk).total().count == 51
    assert_summaries_match(collection)


def test_gc_takes_collected_tombstones_out_of_the_summaries(collection: Collection) -> None:
    now = T0 + 100 * DAY_MS
    batch_apply(
        actor=ACTOR,
        collection_id=collection.pk,
        feed={"changeSet": [{"_id": "a", "_revision": 1, "_modified": T0}]},
        origin="r",
        at_ms=T0,
    )
    batch_apply(
        actor=ACTOR,
        collection_id=collection.pk,
        feed={"tombstoneMap": {"a": T0 + 1}},
        origin="r",
        at_ms=T0,
    )
    assert tombstones_collect(collection_id=collection.pk, at_ms=now).collected == 1
    assert ranges_stored(collection.pk).total() == Summary()
    assert_summaries_match(collection)


def test_an_import_replaces_the_summaries(collection: Collection) -> None:
    feed = {
        "changeSet": [{"_id": f"d{i}", "_revision": 1, "_modified": T0} for i in range(20)],
        "tombstoneMap": {"gone": T0},
    }
    batch_apply(actor=ACTOR, collection_id=collection.pk, feed=feed, origin="r")
    exported = io.StringIO()
    collection_export(collection_id=collection.pk, out=exported)
    before = ranges_stored(collection.pk)
    batch_apply(
        actor=ACTOR, collection_id=collection.pk, feed={"tombstoneMap": {"d1": T0 + 5}}, origin="r"
    )
    collection_import(
        actor=ACTOR,
        tenant=collection.tenant,
        name=collection.name,
        source=io.StringIO(exported.getvalue()),
    )
    assert ranges_stored(collection.pk).buckets == before.buckets
    assert_summaries_match(collection)


def test_verify_reports_a_damaged_summary_and_rebuild_repairs_it(
    collection: Collection,
) -> None:
    feed = {"changeSet": [{"_id": f"d{i}", "_revision": 1, "_modified": T0} for i in range(5)]}
    batch_apply(actor=ACTOR, collection_id=collection.pk, feed=feed, origin="r")
    row = RangeBucket.objects.filter(collection=collection, count__gt=0).first()
    assert row is not None
    RangeBucket.objects.filter(pk=row.pk).update(hash=row.hash ^ 1)
    report = collection_verify(collection_id=collection.pk)
    assert [p.code for p in report.problems] == ["DG-7107"]
    out = io.StringIO()
    call_command(
        "datagate_ranges_rebuild",
        collection=[f"{collection.tenant.slug}/{collection.name}"],
        stdout=out,
    )
    assert "1 bucket(s) were wrong" in out.getvalue()
    assert collection_verify(collection_id=collection.pk).ok
    assert ranges_rebuild(collection_id=collection.pk) == 0


def test_a_filtered_view_sums_only_what_the_user_may_read(collection: Collection) -> None:
    feed = {"changeSet": [{"_id": f"d{i}", "_revision": 1, "_modified": T0} for i in range(30)]}
    batch_apply(actor=ACTOR, collection_id=collection.pk, feed=feed, origin="r")
    odd = {f"d{i}" for i in range(1, 30, 2)}
    table = ranges_table(collection_id=collection.pk, read_filter=lambda doc_id: doc_id in odd)
    assert table.total().count == 15
    expected = BucketTable.of(Header(d, 1, T0, False) for d in odd)
    assert table.buckets == expected.buckets
    headers = range_headers(
        collection_id=collection.pk, ranges=[(0, BUCKETS)], read_filter=lambda d: d in odd
    )
    assert sorted(h.doc_id for h in headers[(0, BUCKETS)]) == sorted(odd)


IDS = st.sampled_from([f"doc-{i}" for i in range(40)])
CHANGE = st.one_of(
    st.tuples(st.just("put"), IDS, st.integers(1, 4), st.integers(0, 50)),
    st.tuples(st.just("delete"), IDS, st.just(0), st.integers(0, 50)),
)
STEP = st.one_of(
    st.tuples(st.just("chunks"), st.lists(st.lists(CHANGE, max_size=8), min_size=1, max_size=3)),
    st.tuples(st.just("server_put"), IDS),
    st.tuples(st.just("server_delete"), IDS),
    st.tuples(st.just("gc"), st.integers(0, 60)),
)


def _feed(changes: list[tuple[str, str, int, int]]) -> dict[str, Any]:
    change_set = []
    tombstones: dict[str, int] = {}
    for kind, doc_id, revision, offset in changes:
        if kind == "put":
            change_set.append({"_id": doc_id, "_revision": revision, "_modified": T0 + offset})
        else:
            tombstones[doc_id] = T0 + offset
    return {"changeSet": change_set, "tombstoneMap": tombstones}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(STEP, min_size=1, max_size=8))
def test_incremental_summaries_equal_a_full_recomputation(
    tenant: Any, steps: list[tuple[Any, ...]]
) -> None:
    collection = Collection.objects.create(tenant=tenant, name=f"p{Collection.objects.count()}")
    for step in steps:
        if step[0] == "chunks":
            batch_apply_many(
                actor=ACTOR,
                collection_id=collection.pk,
                chunks=[(_feed(chunk), "") for chunk in step[1]],
                origin="r",
                at_ms=T0 + 100,
            )
        elif step[0] == "server_put":
            document_put(
                actor=ACTOR, collection_id=collection.pk, doc_id=step[1], body={"v": 1}, origin="s"
            )
        elif step[0] == "server_delete":
            document_delete(actor=ACTOR, collection_id=collection.pk, doc_id=step[1], origin="s")
        else:
            tombstones_collect(collection_id=collection.pk, at_ms=T0 + step[1] + 30 * DAY_MS)
        assert_summaries_match(collection)


def test_a_range_check_reads_stored_groups_and_scans_once_for_finer_ranges(
    collection: Collection,
) -> None:
    feed = {"changeSet": [{"_id": f"d{i}", "_revision": 1, "_modified": T0} for i in range(300)]}
    batch_apply(actor=ACTOR, collection_id=collection.pk, feed=feed, origin="r")
    batch_apply(
        actor=ACTOR, collection_id=collection.pk, feed={"tombstoneMap": {"d0": T0 + 1}}, origin="r"
    )
    total = ranges_stored(collection.pk).total()
    body, buckets = range_answer(
        collection_id=collection.pk, read_filter=None, asks=[Ask(0, BUCKETS, total)]
    )
    assert body["equal"] is True
    assert buckets is None
    assert body["markers"]["collectionMarker"] == 301
    body, buckets = range_answer(
        collection_id=collection.pk, read_filter=None, asks=[Ask(0, BUCKETS, Summary())]
    )
    (split,) = body["ranges"]
    assert split["status"] == "split"
    assert len(split["parts"]) == 16
    assert buckets is None
    assert sum(p["count"] for p in split["parts"]) == 300
    part = split["parts"][0]
    body, buckets = range_answer(
        collection_id=collection.pk,
        read_filter=None,
        asks=[Ask(part["lo"], part["hi"], Summary())],
    )
    assert buckets is not None  # finer than a stored group: one scan, kept by the session
    answer = body["ranges"][0]
    assert answer["status"] == ("headers" if part["count"] <= 64 else "split")
    fetched = range_fetch(collection_id=collection.pk, read_filter=None, ids=["d1", "d0", "zz"])
    assert [d["_id"] for d in fetched["feed"]["changeSet"]] == ["d1"]
    assert fetched["feed"]["tombstoneMap"] == {"d0": T0 + 1}
    assert fetched["missing"] == ["zz"]
    hidden = range_fetch(collection_id=collection.pk, read_filter=lambda i: i != "d1", ids=["d1"])
    assert hidden == {"feed": {"changeSet": [], "tombstoneMap": {}}, "missing": ["d1"]}
