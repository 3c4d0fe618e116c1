"""`batch_apply_many(same_version_is_noop=True)`: what a G3 session's echo of a pulled document
does to the store (replication/services/engine.py; docs/protocol.md section 10). SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.access import System
from replication.models import Collection, Document, JournalEntry
from replication.services.engine import batch_apply_many

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

T0 = 1_795_000_000_000
STORED = {"_id": "1", "_revision": 2, "_modified": T0, "title": "milk"}


def push(
    collection: Collection,
    *docs: dict[str, Any],
    origin: str,
    actor: Any = None,
    **options: Any,
) -> Any:
    (result,) = batch_apply_many(
        actor=System("test") if actor is None else actor,
        collection_id=collection.pk,
        chunks=[({"changeSet": list(docs)}, "m1")],
        origin=origin,
        **options,
    )
    return result


@pytest.fixture
def stored(collection: Collection) -> Collection:
    push(collection, STORED, origin="a-writer")
    return collection


def test_an_echo_under_another_origin_changes_nothing_and_is_processed(stored: Collection) -> None:
    result = push(stored, dict(STORED), origin="z-g3-replica", same_version_is_noop=True)
    assert (result.added, result.rejected, result.applied) == (["1"], [], 0)
    assert Document.objects.get(doc_id="1").origin == "a-writer"
    assert JournalEntry.objects.count() == 1


def test_without_the_flag_the_conflict_rules_origin_tie_break_applies(stored: Collection) -> None:
    result = push(stored, dict(STORED), origin="z-g3-replica")
    assert result.applied == 1
    assert Document.objects.get(doc_id="1").origin == "z-g3-replica"


@pytest.mark.parametrize(
    "changed", [{"title": "eggs"}, {"_revision": 3}, {"_modified": T0 + 1}, {"extra": 1}]
)
def test_a_different_version_still_goes_by_the_conflict_rule(
    stored: Collection, changed: dict[str, Any]
) -> None:
    result = push(stored, {**STORED, **changed}, origin="z-g3-replica", same_version_is_noop=True)
    assert result.applied == 1
    assert Document.objects.get(doc_id="1").origin == "z-g3-replica"


def test_a_read_only_users_echo_is_processed_and_a_real_change_refused(
    stored: Collection, member: Any
) -> None:
    reader = member("reader", "reader")
    echo, edit = dict(STORED), {**STORED, "_id": "1", "title": "mine", "_revision": 3}
    result = push(stored, echo, origin="r", actor=reader, same_version_is_noop=True)
    assert (result.added, result.rejected) == (["1"], [])
    result = push(stored, edit, origin="r", actor=reader, same_version_is_noop=True)
    assert result.added == []
    assert [r.error.code for r in result.rejected] == ["DG-3002"]
    new = {**STORED, "_id": "2"}
    result = push(stored, new, origin="r", actor=reader, same_version_is_noop=True)
    assert [r.doc_id for r in result.rejected] == ["2"]
    assert JournalEntry.objects.count() == 1
