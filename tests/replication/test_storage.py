"""The storage engine's services: apply chunks, conflicts, validation, reading changes.

Marked `storage`: `make test` runs these once on SQLite and again on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.access import System
from accounts.models import KeyRule
from core.errors import DataGateError, ErrorCode
from replication.changes import Version, newest_per_id
from replication.models import Collection, Document, JournalEntry, Tombstone
from replication.protocol.conflicts import DELETE, WRITE
from replication.selectors import changes_since, collection_state, feed_from_changes
from replication.services.documents import document_delete, document_put
from replication.services.engine import (
    batch_apply,
    batch_apply_many,
    collection_get_or_create,
    now_ms,
)
from replication.services.replicas import replica_connected

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

T0 = 1_700_000_000_000


def doc(doc_id: str, revision: int = 1, modified: int = T0, **fields: Any) -> dict[str, Any]:
    return {"_id": doc_id, "_revision": revision, "_modified": modified, **fields}


def apply(collection: Collection, **feed: Any) -> Any:
    return batch_apply(
        actor=System("test"), collection_id=collection.pk, feed=feed, origin="replica-1"
    )


def codes(result: Any) -> dict[str, str]:
    return {r["id"]: r["code"] for r in result.receipt()["rejected"]}


def test_a_chunk_is_applied_with_one_seq_per_change_and_journalled(collection: Collection) -> None:
    result = apply(collection, changeSet=[doc("a", title="A"), doc("b")], tombstoneMap={"c": T0})
    assert result.receipt() == {"added": ["a", "b"], "removed": ["c"], "rejected": []}
    assert (result.first_seq, result.last_seq) == (1, 3)
    collection.refresh_from_db()
    assert collection.last_seq == 3
    assert Document.objects.get(doc_id="a").body == {"title": "A"}
    assert Tombstone.objects.get(doc_id="c").deleted_at == T0
    assert list(JournalEntry.objects.order_by("seq").values_list("seq", "operation", "doc_id")) == [
        (1, "put", "a"),
        (2, "put", "b"),
        (3, "delete", "c"),
    ]


def test_applying_the_same_chunk_twice_changes_nothing(collection: Collection) -> None:
    feed = {"changeSet": [doc("a", x=1)], "tombstoneMap": {"b": T0}}
    first = apply(collection, **feed)
    state = collection_state(collection_id=collection.pk)
    second = apply(collection, **feed)
    assert second.receipt() == first.receipt()
    assert second.applied == 0
    assert collection_state(collection_id=collection.pk) == state
    assert JournalEntry.objects.count() == 2


def test_an_older_version_is_processed_but_does_not_replace_the_newer(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("a", revision=2, modified=T0 + 10, v="new")])
    result = apply(collection, changeSet=[doc("a", revision=1, modified=T0, v="old")])
    assert result.receipt()["added"] == ["a"]
    assert result.applied == 0
    assert Document.objects.get(doc_id="a").body == {"v": "new"}


def test_a_delete_moves_the_id_to_tombstones_and_an_older_write_cannot_revive_it(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("a", modified=T0)])
    apply(collection, tombstoneMap={"a": T0 + 5})
    assert not Document.objects.filter(doc_id="a").exists()
    tomb = Tombstone.objects.get(doc_id="a")
    assert (tomb.revision, tomb.seq) == (2, 2)
    apply(collection, changeSet=[doc("a", revision=9, modified=T0 + 4)])
    assert not Document.objects.filter(doc_id="a").exists()
    apply(collection, changeSet=[doc("a", revision=1, modified=T0 + 6, back=True)])
    assert Document.objects.get(doc_id="a").body == {"back": True}
    assert not Tombstone.objects.filter(doc_id="a").exists()


def stored(collection: Collection) -> dict[str, Any]:
    """Every column batch_apply writes to documents and tombstones, by id."""
    return {
        "documents": {
            d.doc_id: (d.body, d.revision, d.modified, d.origin, d.seq)
            for d in Document.objects.filter(collection=collection)
        },
        "tombstones": {
            t.doc_id: (t.deleted_at, t.revision, t.origin, t.seq)
            for t in Tombstone.objects.filter(collection=collection)
        },
    }


def test_each_applied_change_is_journalled_once_with_who_sent_it_and_when(
    collection: Collection, make_user: Any
) -> None:
    user = make_user("writer", is_superuser=True)
    replica = replica_connected(collection_id=collection.pk, replica_id="phone", user_id=user.pk)
    before = timezone.now() - timedelta(seconds=1)
    feed = {"changeSet": [doc("a"), doc("b", v=1)], "tombstoneMap": {"c": T0}}
    result = batch_apply(
        actor=user,
        collection_id=collection.pk,
        feed=feed,
        origin="phone",
        replica_pk=replica.pk,
        message_id="m" * 80,
    )
    again = batch_apply(
        actor=user,
        collection_id=collection.pk,
        feed=feed,
        origin="phone",
        message_id="m2",
    )
    after = timezone.now() + timedelta(seconds=1)
    assert (result.applied, result.first_seq, result.last_seq) == (3, 1, 3)
    assert (again.applied, again.first_seq, again.last_seq) == (0, None, None)
    entries = list(JournalEntry.objects.filter(collection=collection).order_by("seq"))
    assert [(e.seq, e.operation, e.doc_id, e.revision, e.modified, e.origin) for e in entries] == [
        (1, "put", "a", 1, T0, "phone"),
        (2, "put", "b", 1, T0, "phone"),
        (3, "delete", "c", 1, T0, "phone"),
    ]
    for entry in entries:
        assert (entry.replica_id, entry.user_id, entry.message_id) == (
            replica.pk,
            user.pk,
            "m" * 64,
        )
        assert before <= entry.created_at <= after


def test_a_newer_write_replaces_every_column_of_the_stored_document(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("a", revision=1, modified=T0, old=True, n=[1, {"x": 2}])])
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        origin="replica-2",
        feed={"changeSet": [doc("a", revision=2, modified=T0 + 1, text="é ☃", n=1.5)]},
    )
    assert stored(collection) == {
        "documents": {"a": ({"text": "é ☃", "n": 1.5}, 2, T0 + 1, "replica-2", 2)},
        "tombstones": {},
    }
    assert Document.objects.filter(collection=collection).count() == 1


AWKWARD = ["a,b", 'q"uote', "{brace}", "back\\slash", "NULL", "sp ace", "é☃", "'single'"]


def test_ids_origins_and_bodies_with_awkward_characters_are_stored_as_sent(
    collection: Collection,
) -> None:
    # On PostgreSQL the rows travel as one JSON array, whose strings escape these.
    changes = [
        {**doc(name), "_origin": f"o-{name}", "v": name, "nested": {name: [name, None]}}
        for name in AWKWARD
    ]
    apply(collection, changeSet=[*changes, doc("empty")], tombstoneMap={"NULL,x": T0})
    documents = stored(collection)["documents"]
    assert set(documents) == {*AWKWARD, "empty"}
    for seq, name in enumerate(AWKWARD, start=1):
        assert documents[name] == (
            {"v": name, "nested": {name: [name, None]}},
            1,
            T0,
            f"o-{name}",
            seq,
        )
    assert documents["empty"] == ({}, 1, T0, "replica-1", len(AWKWARD) + 1)
    assert stored(collection)["tombstones"] == {"NULL,x": (T0, 1, "replica-1", len(AWKWARD) + 2)}
    journal = JournalEntry.objects.order_by("seq").values_list("doc_id", "origin")
    assert list(journal) == [
        *((name, f"o-{name}") for name in AWKWARD),
        ("empty", "replica-1"),
        ("NULL,x", "replica-1"),
    ]


# Printable text an id, an origin or a message id may hold (no controls, no surrogates).
ID_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"),
    min_size=1,
    max_size=20,
).filter(lambda t: not any("\x80" <= c <= "\x9f" for c in t))
# Any character a stored text may hold: no lone surrogate, no NUL (the door refuses both).
TEXT_CHARACTERS = st.characters(codec="utf-8", blacklist_characters="\x00")
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(TEXT_CHARACTERS, max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(TEXT_CHARACTERS, max_size=4),
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
)


def as_decimals(value: Any) -> Any:
    """`value` with each number as the decimal its JSON text names: PostgreSQL's jsonb keeps
    numbers as decimals, so `4.438569900407435e16` comes back as the integer it spells."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [as_decimals(item) for item in value]
    return {key: as_decimals(item) for key, item in value.items()}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ids=st.lists(ID_TEXT, min_size=1, max_size=6, unique=True),
    origin=ID_TEXT,
    message_id=ID_TEXT,
    bodies=st.lists(
        st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True), JSON_VALUES, max_size=3
        ),
        min_size=6,
        max_size=6,
    ),
    json_values=st.booleans(),
)
def test_whatever_text_and_values_a_write_carries_are_stored_exactly(
    tenant: Any,
    ids: list[str],
    origin: str,
    message_id: str,
    bodies: list[dict[str, Any]],
    json_values: bool,
) -> None:
    """The rows a write stores (on PostgreSQL one JSON array that the database expands) hold
    exactly what was sent: ids, origins, message ids, stamps and bodies, generated."""
    collection = Collection.objects.create(tenant=tenant, name=f"t{Collection.objects.count()}")
    changes = [
        {**doc(doc_id, revision=n + 1, modified=T0 + n), "_origin": origin, **body}
        for n, (doc_id, body) in enumerate(zip(ids, bodies, strict=False))
    ]
    tombstone = f"{ids[0]}-gone"
    [result] = batch_apply_many(
        actor=System("test"),
        collection_id=collection.pk,
        chunks=[({"changeSet": changes, "tombstoneMap": {tombstone: T0}}, message_id)],
        origin="sender",
        json_values=json_values,
    )
    assert result.rejected == []
    documents, tombstones = rows_of(collection)
    assert sorted((row[0], as_decimals(row[1]), *row[2:]) for row in documents) == sorted(
        (c["_id"], as_decimals(body), c["_revision"], c["_modified"], origin, n + 1)
        for n, (c, body) in enumerate(zip(changes, bodies, strict=False))
    )
    assert tombstones == [(tombstone, T0, 1, "sender", len(changes) + 1)]
    assert journal_of(collection) == [
        *(
            (n + 1, "put", c["_id"], c["_revision"], c["_modified"], origin, message_id[:64])
            for n, c in enumerate(changes)
        ),
        (len(changes) + 1, "delete", tombstone, 1, T0, "sender", message_id[:64]),
    ]


def test_a_write_over_a_tombstone_and_a_delete_over_a_tombstone(collection: Collection) -> None:
    apply(collection, changeSet=[doc("revived"), doc("kept")])
    apply(collection, tombstoneMap={"revived": T0 + 1, "kept": T0 + 1})
    result = apply(
        collection,
        changeSet=[doc("revived", revision=3, modified=T0 + 2, back=True)],
        tombstoneMap={"kept": T0 + 3},
    )
    assert (result.applied, result.first_seq, result.last_seq) == (2, 5, 6)
    assert stored(collection) == {
        "documents": {"revived": ({"back": True}, 3, T0 + 2, "replica-1", 5)},
        # A delete's revision follows the stored one: write 1, delete 2, delete again 3.
        "tombstones": {"kept": (T0 + 3, 3, "replica-1", 6)},
    }


def test_a_write_behind_the_purge_horizon_is_refused_beside_changes_that_apply(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("known")])
    Collection.objects.filter(pk=collection.pk).update(purge_horizon_ms=T0 + 10)
    result = apply(
        collection,
        changeSet=[doc("stale", modified=T0 + 10), doc("known", revision=2, modified=T0 + 5)],
        tombstoneMap={"gone": T0 + 9},
    )
    assert codes(result) == {"stale": ErrorCode.PURGED_DELETE.code}
    assert result.receipt()["added"] == ["known"]
    assert result.receipt()["removed"] == ["gone"]
    assert (result.applied, result.first_seq, result.last_seq) == (1, 2, 2)
    assert list(JournalEntry.objects.order_by("seq").values_list("seq", "doc_id")) == [
        (1, "known"),
        (2, "known"),
    ]
    assert stored(collection)["tombstones"] == {}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("not a document", ErrorCode.DOCUMENT_NOT_OBJECT),
        ({"_revision": 1, "_modified": T0}, ErrorCode.BAD_DOCUMENT_ID),
        (doc(""), ErrorCode.BAD_DOCUMENT_ID),
        (doc("x" * 129), ErrorCode.BAD_DOCUMENT_ID),
        ({"_id": 7, "_revision": 1, "_modified": T0}, ErrorCode.BAD_DOCUMENT_ID),
        (doc("bad-rev", revision=0), ErrorCode.BAD_REVISION),
        ({"_id": "bad-rev2", "_revision": "1", "_modified": T0}, ErrorCode.BAD_REVISION),
        ({"_id": "bool-rev", "_revision": True, "_modified": T0}, ErrorCode.BAD_REVISION),
        ({"_id": "bad-mod", "_revision": 1, "_modified": 1.5}, ErrorCode.BAD_MODIFIED),
        ({"_id": "no-mod", "_revision": 1}, ErrorCode.BAD_MODIFIED),
        (doc("reserved", _secret=1), ErrorCode.RESERVED_FIELD),
        (doc("origin", _origin=5), ErrorCode.BAD_ORIGIN),
        (doc("future", modified=now_ms() + 3_600_000), ErrorCode.CLOCK_SKEW),
    ],
)
def test_a_bad_change_is_rejected_with_its_code_and_the_rest_of_the_chunk_applies(
    collection: Collection, change: Any, code: ErrorCode
) -> None:
    result = apply(collection, changeSet=[doc("good-1"), change, doc("good-2")])
    assert result.receipt()["added"] == ["good-1", "good-2"]
    assert [r["code"] for r in result.receipt()["rejected"]] == [code.code]
    assert all(r["error"].startswith(code.code) for r in result.receipt()["rejected"])
    assert set(Document.objects.values_list("doc_id", flat=True)) == {"good-1", "good-2"}


@pytest.mark.parametrize("when", ["soon", 1.5, None, -1])
def test_a_bad_tombstone_is_rejected_with_its_code(collection: Collection, when: Any) -> None:
    result = apply(collection, changeSet=[doc("keep")], tombstoneMap={"gone": when})
    assert codes(result) == {"gone": ErrorCode.BAD_TOMBSTONE.code}
    assert result.receipt()["added"] == ["keep"]


def test_a_tombstone_from_the_future_is_refused(collection: Collection) -> None:
    result = apply(collection, tombstoneMap={"gone": now_ms() + 3_600_000})
    assert codes(result) == {"gone": ErrorCode.CLOCK_SKEW.code}


def test_a_feed_of_the_wrong_shape_is_refused_whole(collection: Collection) -> None:
    with pytest.raises(DataGateError) as caught:
        apply(collection, changeSet={"not": "a list"})
    assert caught.value.error is ErrorCode.INVALID_MESSAGE


def test_a_refused_change_gets_its_own_code_and_the_rest_apply(
    collection: Collection, member: Any
) -> None:
    KeyRule.objects.create(
        tenant=collection.tenant,
        collection_name=collection.name,
        position=10,
        pattern="private/*",
        effect="deny",
        for_write=True,
    )
    result = batch_apply(
        actor=member("writer", "writer"),
        collection_id=collection.pk,
        origin="r",
        feed={"changeSet": [doc("private/x"), doc("public/y")]},
    )
    assert codes(result) == {"private/x": ErrorCode.KEY_WRITE_DENIED.code}
    assert list(Document.objects.values_list("doc_id", flat=True)) == ["public/y"]


def test_the_engine_takes_no_guard_but_the_actor(collection: Collection) -> None:
    with pytest.raises(TypeError, match="guard"):
        batch_apply(  # type: ignore[call-arg]
            actor=System("test"),
            collection_id=collection.pk,
            origin="r",
            feed={"changeSet": [doc("a")]},
            guard=lambda version: None,
        )
    assert not Document.objects.exists()


def test_origin_defaults_to_the_senders_and_meta_fields_are_not_stored(
    collection: Collection,
) -> None:
    apply(collection, changeSet=[doc("a", title="t")])
    stored = Document.objects.get(doc_id="a")
    assert stored.origin == "replica-1"
    assert stored.body == {"title": "t"}


def test_changes_since_pages_in_seq_order_with_documents_and_tombstones(
    collection: Collection,
) -> None:
    for i in range(10):
        apply(collection, changeSet=[doc(f"d{i}", modified=T0 + i)])
    apply(collection, tombstoneMap={"d3": T0 + 100})
    apply(collection, changeSet=[doc("d5", revision=2, modified=T0 + 101)])
    seen: list[int] = []
    marker = 0
    while page := changes_since(collection_id=collection.pk, after_seq=marker, limit=3):
        seen.extend(c.seq for c in page)
        marker = page[-1].seq
    # d3 and d5 appear once, at their latest change.
    assert seen == [1, 2, 3, 5, 7, 8, 9, 10, 11, 12]
    tail = changes_since(collection_id=collection.pk, after_seq=10, limit=100)
    feed = feed_from_changes(tail)
    assert feed["tombstoneMap"] == {"d3": T0 + 100}
    assert [d["_id"] for d in feed["changeSet"]] == ["d5"]
    assert feed["changeSet"][0]["_revision"] == 2
    bounded = changes_since(collection_id=collection.pk, after_seq=0, limit=100, up_to_seq=5)
    assert [c.seq for c in bounded] == [1, 2, 3, 5]


def test_server_writes_stamp_the_next_revision_and_check_expected_revisions(
    collection: Collection,
) -> None:
    first = document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="a",
        body={"n": 1},
        origin="server",
    )
    assert first.applied == 1
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="a",
        body={"n": 2},
        origin="server",
        expected_revision=1,
    )
    stored = Document.objects.get(doc_id="a")
    assert (stored.revision, stored.body) == (2, {"n": 2})
    with pytest.raises(DataGateError) as caught:
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id="a",
            body={"n": 3},
            origin="server",
            expected_revision=1,
        )
    assert caught.value.error is ErrorCode.REVISION_CONFLICT
    document_delete(actor=System("test"), collection_id=collection.pk, doc_id="a", origin="server")
    assert Tombstone.objects.get(doc_id="a").revision == 3
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="a",
        body={"n": 4},
        origin="server",
    )
    assert Document.objects.get(doc_id="a").revision == 4


def test_a_server_write_orders_after_a_version_stamped_ahead_of_its_clock(
    collection: Collection,
) -> None:
    ahead = now_ms() + 60_000
    apply(collection, changeSet=[doc("a", modified=ahead, v="replica")])
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="a",
        body={"v": "server"},
        origin="server",
    )
    stored = Document.objects.get(doc_id="a")
    assert stored.body == {"v": "server"}
    assert stored.modified == ahead + 1


def test_collections_are_created_once(tenant: Any) -> None:
    first, created = collection_get_or_create(tenant=tenant, name="things")
    again, created_again = collection_get_or_create(tenant=tenant, name="things")
    assert (created, created_again, first.pk) == (True, False, again.pk)


# --- property: any order, any chunking, converges to the same state -------------------------

version_strategy = st.builds(
    Version,
    doc_id=st.sampled_from(["a", "b", "c", "d"]),
    kind=st.sampled_from([WRITE, WRITE, DELETE]),
    modified=st.integers(T0, T0 + 4),
    revision=st.integers(1, 3),
    origin=st.sampled_from(["r1", "r2", "r3"]),
    body=st.fixed_dictionaries({"v": st.integers(0, 3)}),
)


def as_feed(versions: list[Version]) -> dict[str, Any]:
    change_set = []
    tombstones: dict[str, int] = {}
    for v in versions:
        if v.kind == DELETE:
            # A tombstoneMap holds one time per id: keep the latest, as a replica would.
            tombstones[v.doc_id] = max(v.modified, tombstones.get(v.doc_id, 0))
        else:
            change_set.append(
                {
                    "_id": v.doc_id,
                    "_revision": v.revision,
                    "_modified": v.modified,
                    "_origin": v.origin,
                    **(v.body or {}),
                }
            )
    return {"changeSet": change_set, "tombstoneMap": tombstones}


def expected_state(versions: list[Version]) -> dict[str, Any]:
    winners = newest_per_id(versions)
    return {
        "documents": {
            i: {"body": v.body, "revision": v.revision, "modified": v.modified}
            for i, v in winners.items()
            if v.kind == WRITE
        },
        "tombstones": {i: v.modified for i, v in winners.items() if v.kind == DELETE},
    }


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    versions=st.lists(version_strategy, min_size=1, max_size=12),
    data=st.data(),
)
def test_any_order_and_chunking_converges_and_reapplying_changes_nothing(
    tenant: Any, versions: list[Version], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(versions))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=4)))
    chunks = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    collection = Collection.objects.create(tenant=tenant, name=f"p{Collection.objects.count()}")
    for chunk in chunks:
        batch_apply(
            actor=System("test"), collection_id=collection.pk, feed=as_feed(chunk), origin="r0"
        )
    state = collection_state(collection_id=collection.pk)
    assert state == expected_state(list(order))
    for chunk in chunks:
        assert (
            batch_apply(
                actor=System("test"), collection_id=collection.pk, feed=as_feed(chunk), origin="r0"
            ).applied
            == 0
        )
    assert collection_state(collection_id=collection.pk) == state
    collection.refresh_from_db()
    seqs = list(JournalEntry.objects.filter(collection=collection).values_list("seq", flat=True))
    assert sorted(seqs) == list(range(1, collection.last_seq + 1))


# --- property: several chunks in one transaction are the same as one after another ----------


def journal_of(collection: Collection) -> list[tuple[Any, ...]]:
    return list(
        JournalEntry.objects.filter(collection=collection)
        .order_by("seq")
        .values_list("seq", "operation", "doc_id", "revision", "modified", "origin", "message_id")
    )


def rows_of(collection: Collection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    documents = Document.objects.filter(collection=collection).order_by("doc_id")
    tombstones = Tombstone.objects.filter(collection=collection).order_by("doc_id")
    return (
        list(documents.values_list("doc_id", "body", "revision", "modified", "origin", "seq")),
        list(tombstones.values_list("doc_id", "deleted_at", "revision", "origin", "seq")),
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(version_strategy, max_size=6),
    versions=st.lists(version_strategy, min_size=1, max_size=14),
    data=st.data(),
    horizon=st.sampled_from([0, 0, T0 + 1]),
)
def test_chunks_applied_together_end_exactly_as_chunks_applied_one_after_another(
    tenant: Any, stored: list[Version], versions: list[Version], data: st.DataObject, horizon: int
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(versions) - 1)), max_size=5)))
    chunks = [
        (as_feed(versions[a:b]), f"m{a}")
        for a, b in zip([0, *cuts], [*cuts, len(versions)], strict=True)
    ]
    number = Collection.objects.count()
    one_by_one = Collection.objects.create(tenant=tenant, name=f"s{number}")
    together = Collection.objects.create(tenant=tenant, name=f"t{number}")
    for collection in (one_by_one, together):
        if stored:
            batch_apply(
                actor=System("test"),
                collection_id=collection.pk,
                feed=as_feed(stored),
                origin="r0",
                at_ms=T0 + 9,
            )
        Collection.objects.filter(pk=collection.pk).update(purge_horizon_ms=horizon)
    expected = [
        batch_apply(
            actor=System("test"),
            collection_id=one_by_one.pk,
            feed=feed,
            origin="r0",
            message_id=mid,
            at_ms=T0 + 9,
        )
        for feed, mid in chunks
    ]
    got = batch_apply_many(
        actor=System("test"), collection_id=together.pk, chunks=chunks, origin="r0", at_ms=T0 + 9
    )
    assert [(r.receipt(), r.applied, r.first_seq, r.last_seq) for r in got] == [
        (r.receipt(), r.applied, r.first_seq, r.last_seq) for r in expected
    ]
    assert rows_of(together) == rows_of(one_by_one)
    assert journal_of(together) == journal_of(one_by_one)
    one_by_one.refresh_from_db()
    together.refresh_from_db()
    assert together.last_seq == one_by_one.last_seq
