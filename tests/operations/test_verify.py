"""`datagate_verify` finds each kind of damage, and nothing on a healthy collection.

Marked `storage`: `make test` runs these once on SQLite and again on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.access import System
from replication.maintenance import DAY_MS, journal_prune, tombstones_collect
from replication.models import Collection, Document, JournalEntry, Tombstone
from replication.services.documents import document_put
from replication.services.engine import batch_apply, collection_get_or_create, now_ms
from replication.verify import collection_verify

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

OLD = now_ms() - 60 * DAY_MS


def fill(collection: Collection) -> None:
    """Documents a (rev 2), b, c; tombstones d (recent) and e (old, collected by GC)."""
    feed: dict[str, Any] = {
        "changeSet": [
            {"_id": "a", "_revision": 1, "_modified": OLD},
            {"_id": "b", "_revision": 1, "_modified": OLD, "x": 1},
            {"_id": "c", "_revision": 1, "_modified": OLD},
        ],
        "tombstoneMap": {"d": now_ms() - 1000, "e": OLD},
    }
    batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin="r1")
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="a",
        body={"v": 2},
        origin="server",
    )


def verify(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("datagate_verify", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_healthy_database_has_no_problems_even_after_gc_and_pruning(
    collection: Collection, tenant: Any
) -> None:
    fill(collection)
    empty, _ = collection_get_or_create(tenant=tenant, name="empty")
    assert collection_verify(collection_id=collection.pk).ok
    tombstones_collect(collection_id=collection.pk)
    JournalEntry.objects.update(created_at=timezone.now() - timedelta(days=90))
    assert journal_prune(collection_id=collection.pk).pruned == 6
    out, err = verify()
    assert err == ""
    assert "acme/notes: ok (3 documents, 1 tombstones, 0 journal entries)" in out
    assert "acme/empty: ok" in out
    assert "2 collection(s) checked, no problems found" in out
    assert empty.pk


def _seq(c: Collection, doc_id: str) -> int:
    row = Document.objects.filter(collection=c, doc_id=doc_id).first() or Tombstone.objects.get(
        collection=c, doc_id=doc_id
    )
    return row.seq


def duplicate_seq(c: Collection) -> None:
    Document.objects.filter(collection=c, doc_id="b").update(seq=_seq(c, "c"))


def seq_above_counter(c: Collection) -> None:
    Document.objects.filter(collection=c, doc_id="b").update(seq=c.last_seq + 10)


def journal_seq_above_counter(c: Collection) -> None:
    Collection.objects.filter(pk=c.pk).update(last_seq=c.last_seq - 1)


def live_and_tombstoned(c: Collection) -> None:
    stored = Tombstone.objects.get(collection=c, doc_id="d")
    Tombstone.objects.filter(pk=stored.pk).update(doc_id="b")


def journal_missing(c: Collection) -> None:
    JournalEntry.objects.filter(collection=c, seq=_seq(c, "b")).delete()


def journal_mismatch(c: Collection) -> None:
    JournalEntry.objects.filter(collection=c, seq=_seq(c, "a")).update(revision=7)


def tombstone_journal_mismatch(c: Collection) -> None:
    JournalEntry.objects.filter(collection=c, seq=_seq(c, "d")).update(operation="put")


def purge_seq_ahead(c: Collection) -> None:
    Collection.objects.filter(pk=c.pk).update(purge_seq=c.last_seq + 1)


def pruned_seq_ahead(c: Collection) -> None:
    Collection.objects.filter(pk=c.pk).update(journal_pruned_seq=c.last_seq + 3)


@pytest.mark.parametrize(
    ("damage", "code", "says"),
    [
        (duplicate_seq, "DG-7101", "seq 3 is used by 2 rows (document 'b', document 'c')"),
        (seq_above_counter, "DG-7102", "document 'b' has seq 16, outside 1..6"),
        (journal_seq_above_counter, "DG-7102", "journal entry for 'a' has seq 6, outside 1..5"),
        (live_and_tombstoned, "DG-7103", "'b' is both a live document and a tombstone"),
        (journal_missing, "DG-7104", "document 'b' at seq 2 has no journal entry"),
        (
            journal_mismatch,
            "DG-7105",
            "seq 6 records put 'a' rev 7, the document holds put 'a' rev 2",
        ),
        (
            tombstone_journal_mismatch,
            "DG-7105",
            "seq 4 records put 'd' rev 1, the tombstone holds delete 'd' rev 1",
        ),
        (purge_seq_ahead, "DG-7106", "purge_seq 7 is above the counter last_seq 6"),
        (pruned_seq_ahead, "DG-7106", "journal_pruned_seq 9 is above"),
    ],
)
def test_verify_finds_each_kind_of_damage_and_exits_non_zero(
    collection: Collection, tenant: Any, damage: Callable[[Collection], None], code: str, says: str
) -> None:
    healthy, _ = collection_get_or_create(tenant=tenant, name="healthy")
    fill(healthy)
    fill(collection)
    collection.refresh_from_db()
    damage(collection)
    with pytest.raises(CommandError, match=r"problem\(s\) in 1 of 2 collection\(s\)"):
        verify()
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError):
        call_command("datagate_verify", stdout=out, stderr=err)
    assert f"{code} acme/notes: {says}" in err.getvalue().replace("journal seq", "seq")
    assert "acme/healthy: ok" in out.getvalue()
    assert "acme/healthy" not in err.getvalue()
    codes = {p.code for p in collection_verify(collection_id=collection.pk).problems}
    assert code in codes


def test_verify_lists_a_few_examples_per_kind_and_counts_the_rest(collection: Collection) -> None:
    fill(collection)
    JournalEntry.objects.all().delete()
    report = collection_verify(collection_id=collection.pk, limit=2)
    assert [p.code for p in report.problems] == ["DG-7104"] * 2
    assert report.more == {"DG-7104": 3}  # 3 documents and 2 tombstones in all
    assert "acme/notes: DG-7104: and 3 more" in report.lines()


def test_verify_refuses_unknown_collections() -> None:
    with pytest.raises(CommandError, match="no collection 'acme/nope'"):
        verify("--collection", "acme/nope")
