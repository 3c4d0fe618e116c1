"""The local SQLite file: documents, tombstones, the journal, rejections, markers, resets."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from datagate_replica.clock import DELETE, WRITE
from datagate_replica.store import Markers, Store, StoreError, Version, state_digest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "replica.sqlite3")
    store.bind(tenant="acme", collection="notes")
    return store


def write(
    doc_id: str, modified: int, revision: int = 1, origin: str = "other", **body: object
) -> Version:
    return Version(doc_id, WRITE, modified, revision, origin, dict(body))


def delete(doc_id: str, modified: int) -> Version:
    return Version(doc_id, DELETE, modified, 0, "", None)


def test_the_replica_id_markers_and_clock_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    first = Store(path)
    first.markers_store(Markers(42, 7))
    stamped = first.local_put("a", {"x": 1}).modified
    replica_id = first.replica_id
    first.close()
    again = Store(path)
    assert again.replica_id == replica_id
    assert again.markers() == Markers(42, 7)
    assert again.clock.seen >= stamped
    assert again.journal_size() == 1


def test_a_file_bound_to_one_collection_refuses_another(store: Store) -> None:
    store.bind(tenant="acme", collection="notes")
    with pytest.raises(StoreError, match="acme/notes"):
        store.bind(tenant="acme", collection="tasks")


def test_the_file_runs_in_wal_mode(store: Store) -> None:
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_put_journals_the_change_with_the_next_revision(store: Store) -> None:
    first = store.local_put("a", {"title": "one"})
    second = store.local_put("a", {"title": "two"})
    assert (first.revision, second.revision) == (1, 2)
    assert second.modified > first.modified
    assert second.origin == store.replica_id
    pending = store.journal()
    assert [p.version for p in pending] == [second]  # one entry per id: the latest version
    assert store.document("a") == {
        "title": "two",
        "_id": "a",
        "_revision": 2,
        "_modified": second.modified,
        "_origin": store.replica_id,
    }


def test_a_delete_leaves_a_tombstone_and_journals_it(store: Store) -> None:
    store.local_put("a", {"x": 1})
    removed = store.local_delete("a")
    assert removed is not None
    assert removed.deleted
    assert removed.revision == 2
    assert store.document("a") is None
    assert store.state()["tombstones"] == {"a": removed.modified}
    assert [p.version.kind for p in store.journal()] == [DELETE]
    assert store.local_delete("a") is None
    assert store.local_delete("never") is None


def test_a_write_after_a_delete_revives_the_document_with_a_higher_revision(store: Store) -> None:
    store.local_put("a", {"x": 1})
    store.local_delete("a")
    revived = store.local_put("a", {"x": 2})
    assert revived.revision == 3
    assert store.state()["tombstones"] == {}


def test_a_local_edit_orders_after_a_version_pulled_from_a_clock_far_ahead(store: Store) -> None:
    future = store.clock._now() + 120_000
    store.apply_remote([write("a", future, revision=4, title="from the future")])
    mine = store.local_put("a", {"title": "mine"})
    assert mine.modified > future
    assert mine.key() > write("a", future, revision=4).key()


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"_secret": 1}, "reserved"), ({"x": float("nan")}, "JSON"), ({"x": object()}, "JSON")],
)
def test_bad_fields_are_refused_and_nothing_is_written(
    store: Store, fields: dict, message: str
) -> None:
    with pytest.raises(StoreError, match=message):
        store.local_put("a", fields)
    assert store.journal_size() == 0
    assert store.document("a") is None


@pytest.mark.parametrize("doc_id", ["", "x" * 129, 5])
def test_bad_ids_are_refused(store: Store, doc_id: object) -> None:
    with pytest.raises(StoreError, match="id"):
        store.local_put(doc_id, {})  # type: ignore[arg-type]


def test_a_receipt_drops_exactly_the_acknowledged_changes(store: Store) -> None:
    store.local_put("a", {"n": 1})
    store.local_put("b", {"n": 1})
    store.local_put("c", {"n": 1})
    sent = {p.version.doc_id: p.change_no for p in store.journal()}
    settled = store.settle(sent, {"added": ["a", "b"], "removed": [], "rejected": []})
    assert settled.dropped == 2
    assert [p.version.doc_id for p in store.journal()] == ["c"]


def test_an_edit_made_while_its_chunk_was_in_flight_stays_in_the_journal(store: Store) -> None:
    store.local_put("a", {"n": 1})
    sent = {p.version.doc_id: p.change_no for p in store.journal()}
    newer = store.local_put("a", {"n": 2})  # edited before the receipt arrives
    store.settle(sent, {"added": ["a"], "removed": [], "rejected": []})
    assert [p.version for p in store.journal()] == [newer]


def test_a_rejected_change_is_kept_with_its_reason_and_not_retried(store: Store) -> None:
    store.local_put("a", {"n": 1})
    store.local_put("b", {"n": 1})
    sent = {p.version.doc_id: p.change_no for p in store.journal()}
    rejection = {"id": "a", "code": "DG-3002", "error": "DG-3002 user 'bob' may not write"}
    settled = store.settle(sent, {"added": ["b"], "removed": [], "rejected": [rejection]}, at_ms=5)
    assert store.journal_size() == 0
    [kept] = store.rejected()
    assert (kept.version.doc_id, kept.code, kept.error, kept.rejected_at) == (
        "a",
        "DG-3002",
        rejection["error"],
        5,
    )
    assert settled.rejected == [kept]
    assert store.rejected_clear() == 1
    assert store.rejected() == []


def test_a_receipt_naming_ids_that_were_not_sent_changes_nothing(store: Store) -> None:
    store.local_put("a", {"n": 1})
    store.settle({}, {"added": ["a"], "rejected": [{"id": "a", "code": "x", "error": "x"}]})
    assert store.journal_size() == 1
    assert store.rejected() == []


def test_a_newer_remote_version_replaces_the_local_one_and_supersedes_its_pending_change(
    store: Store,
) -> None:
    mine = store.local_put("a", {"by": "me"})
    changes = store.apply_remote([write("a", mine.modified + 10, revision=1, by="them")])
    assert [c.doc_id for c in changes] == ["a"]
    assert changes[0].source == "remote"
    assert store.document("a")["by"] == "them"  # type: ignore[index]
    assert store.journal_size() == 0


def test_an_older_remote_version_loses_to_a_pending_local_change(store: Store) -> None:
    mine = store.local_put("a", {"by": "me"})
    changes = store.apply_remote([write("a", mine.modified - 10, revision=5, by="them")])
    assert changes == []
    assert store.document("a")["by"] == "me"  # type: ignore[index]
    assert store.journal_size() == 1


def test_a_remote_delete_at_the_same_millisecond_beats_a_local_write(store: Store) -> None:
    mine = store.local_put("a", {"by": "me"})
    changes = store.apply_remote([delete("a", mine.modified)])
    assert changes[0].deleted
    assert store.document("a") is None
    assert store.journal_size() == 0


def test_applying_the_same_remote_versions_twice_changes_nothing(store: Store) -> None:
    batch = [write("a", 10, x=1), delete("b", 11), write("c", 12, x=3)]
    assert len(store.apply_remote(batch)) == 3
    before = store.state_hash()
    assert store.apply_remote(batch) == []
    assert store.state_hash() == before


def test_remote_versions_and_their_markers_are_stored_together(store: Store) -> None:
    store.apply_remote([write("a", 10)], markers=Markers(9, 3))
    assert store.markers() == Markers(9, 3)


def test_a_failed_write_rolls_back_everything_in_its_transaction(store: Store) -> None:
    def crash_in_the_middle() -> None:
        with store.transaction():
            store._write(write("a", 10))
            store._store_markers(Markers(5, 5))
            raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError, match="crash in the middle"):
        crash_in_the_middle()
    assert store.document("a") is None
    assert store.markers() == Markers()


def test_a_reset_drops_what_the_snapshot_lacks_unless_it_is_pending(store: Store) -> None:
    store.apply_remote([write("kept", 1), write("gone", 2), delete("old-tomb", 3)])
    store.local_put("pending", {"n": 1})
    changes = store.reset_drop({"kept"})
    assert [c.doc_id for c in changes] == ["gone"]
    assert changes[0].deleted
    state = store.state()
    assert set(state["documents"]) == {"kept", "pending"}
    assert state["tombstones"] == {}


def test_after_a_restore_what_the_snapshot_lacks_or_has_older_is_journaled_again(
    store: Store,
) -> None:
    store.apply_remote([write("same", 5), write("newer-here", 9, revision=2), write("lacking", 3)])
    store.apply_remote([delete("deleted-here", 7)])
    snapshot = {
        "same": write("same", 5).key(),
        "newer-here": write("newer-here", 4).key(),
        "deleted-here": write("deleted-here", 6).key(),
    }
    assert store.requeue_missing(snapshot) == 3
    pending = {p.version.doc_id: p.version for p in store.journal()}
    assert set(pending) == {"newer-here", "lacking", "deleted-here"}
    assert pending["newer-here"].modified == 9  # pushed as it is, not restamped
    assert pending["deleted-here"].deleted


def test_queries_match_fields_by_equality(store: Store) -> None:
    store.local_put("a", {"kind": "task", "done": False, "n": 1, "tags": ["x"]})
    store.local_put("b", {"kind": "task", "done": True, "n": 1.0})
    store.local_put("c", {"kind": "note", "done": None, "n": "1"})
    ids = lambda docs: [d["_id"] for d in docs]  # noqa: E731
    assert ids(store.documents({"kind": "task"})) == ["a", "b"]
    assert ids(store.documents({"done": False})) == ["a"]
    assert ids(store.documents({"done": None})) == ["c"]
    assert ids(store.documents({"n": 1})) == ["a", "b"]
    assert ids(store.documents({"n": "1"})) == ["c"]
    assert ids(store.documents({"tags": ["x"]})) == ["a"]
    assert ids(store.documents({"kind": "task", "done": True})) == ["b"]
    assert ids(store.documents(limit=1)) == ["a"]
    with pytest.raises(StoreError):
        store.documents({'bad"name': 1})


def test_the_state_digest_ignores_order_and_sees_every_difference() -> None:
    one = {"documents": {"a": {"body": {"x": 1, "y": 2}}, "b": {}}, "tombstones": {"c": 1}}
    same = {"tombstones": {"c": 1}, "documents": {"b": {}, "a": {"body": {"y": 2, "x": 1}}}}
    other = {"documents": {"a": {"body": {"x": 1, "y": 2}}, "b": {}}, "tombstones": {"c": 2}}
    assert state_digest(one) == state_digest(same) != state_digest(other)


def test_two_processes_can_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    one, two = Store(path), Store(path)
    one.local_put("a", {"n": 1})
    two.local_put("b", {"n": 2})
    assert {p.version.doc_id for p in one.journal()} == {"a", "b"}
    assert one.replica_id == two.replica_id


edits = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", "c"]), st.booleans(), st.integers()),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=edits, order=st.randoms(use_true_random=False))
def test_replicas_that_exchange_their_journals_in_any_order_converge(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, str, bool, int]], order: Any
) -> None:
    folder = tmp_path_factory.mktemp("converge")
    stores = [Store(folder / f"r{i}.sqlite3") for i in range(3)]
    try:
        for who, doc_id, remove, value in edits:
            if remove:
                stores[who].local_delete(doc_id)
            else:
                stores[who].local_put(doc_id, {"v": value})
        outgoing = [[p.version for p in store.journal()] for store in stores]
        for index, store in enumerate(stores):
            incoming = [v for j, versions in enumerate(outgoing) if j != index for v in versions]
            order.shuffle(incoming)
            store.apply_remote(incoming)
        assert len({store.state_hash() for store in stores}) == 1
    finally:
        for store in stores:
            store.close()


DEEP: Any = 1
for _ in range(70):
    DEEP = [DEEP]


@pytest.mark.parametrize(
    ("doc_id", "fields", "code"),
    [
        ("a", {"t": "\ud800"}, "DG-4010"),
        ("a", {"\udfff": 1}, "DG-4010"),
        ("a", {"t": "x\x00"}, "DG-4010"),
        ("a", {"n": float("nan")}, "DG-4012"),
        ("a", {"n": [float("inf")]}, "DG-4012"),
        (
            "a",
            {
                "d": [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                [
                                                                                                                                                                                    [
                                                                                                                                                                                        [
                                                                                                                                                                                            [
                                                                                                                                                                                                [
                                                                                                                                                                                                    [
                                                                                                                                                                                                        [
                                                                                                                                                                                                            [
                                                                                                                                                                                                                [
                                                                                                                                                                                                                    [
                                                                                                                                                                                                                        [
                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                                1
                                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                ]
                                                                                                                                                                                                            ]
                                                                                                                                                                                                        ]
                                                                                                                                                                                                    ]
                                                                                                                                                                                                ]
                                                                                                                                                                                            ]
                                                                                                                                                                                        ]
                                                                                                                                                                                    ]
                                                                                                                                                                                ]
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ]
            },
            "DG-4011",
        ),
        ("bad\x01id", {}, "DG-4002"),
        ("lone\ud800", {}, "DG-4002"),
    ],
)
def test_put_refuses_what_the_server_s_door_would(
    store: Store, doc_id: str, fields: dict[str, Any], code: str
) -> None:
    with pytest.raises(StoreError, match=code):
        store.local_put(doc_id, fields)
    assert store.document("a") is None
    store.local_put("fine", {"t": "a literal \\u0000 is text", "big": 2**80, "s": "\U0001f600"})
