"""Journal retention and size: `datagate_journal --prune` and `--size`.

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
from replication.maintenance import journal_prune, journal_size
from replication.models import Collection, JournalEntry, MaintenanceRun, Replica
from replication.services.engine import batch_apply, collection_get_or_create, now_ms
from replication.services.replicas import replica_acked, replica_connected, replica_disconnected

pytestmark = [pytest.mark.storage, pytest.mark.django_db]


def write(collection: Collection, *ids: str) -> None:
    feed = {"changeSet": [{"_id": i, "_revision": 1, "_modified": now_ms() - 1000} for i in ids]}
    batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin="r1")


def age(collection: Collection, days: int, up_to_seq: int) -> None:
    JournalEntry.objects.filter(collection=collection, seq__lte=up_to_seq).update(
        created_at=timezone.now() - timedelta(days=days)
    )


def test_prune_deletes_only_entries_older_than_the_retention(collection: Collection) -> None:
    write(collection, "a", "b", "c", "d")
    age(collection, 40, up_to_seq=3)
    report = journal_prune(collection_id=collection.pk)
    assert (report.pruned, report.pruned_seq_after, report.retention_days) == (3, 3, 30)
    assert list(JournalEntry.objects.values_list("seq", flat=True)) == [4]
    collection.refresh_from_db()
    assert collection.journal_pruned_seq == 3


def test_prune_keeps_what_an_online_replica_has_not_acknowledged(
    collection: Collection, make_user: Any
) -> None:
    user = make_user("bob")
    write(collection, "a", "b", "c", "d", "e")
    age(collection, 40, up_to_seq=5)
    behind = replica_connected(collection_id=collection.pk, replica_id="phone", user_id=user.pk)
    replica_acked(replica_pk=behind.pk, seq=2)
    ahead = replica_connected(collection_id=collection.pk, replica_id="laptop", user_id=user.pk)
    replica_acked(replica_pk=ahead.pk, seq=5)
    gone = replica_connected(collection_id=collection.pk, replica_id="old", user_id=user.pk)
    replica_disconnected(replica_pk=gone.pk)  # offline at seq 0: it does not hold the journal

    dry = journal_prune(collection_id=collection.pk, dry_run=True)
    assert (dry.pruned, dry.kept_for_replicas) == (2, 3)
    assert JournalEntry.objects.count() == 5
    report = journal_prune(collection_id=collection.pk)
    assert "kept 3 an online replica has not acknowledged" in report.line()
    assert list(JournalEntry.objects.order_by("seq").values_list("seq", flat=True)) == [3, 4, 5]
    Replica.objects.filter(pk=behind.pk).update(online=False)
    assert journal_prune(collection_id=collection.pk).pruned == 3


def test_datagate_journal_prune_dry_run_changes_nothing_and_prune_records_its_run(
    collection: Collection,
) -> None:
    write(collection, "a", "b")
    age(collection, 40, up_to_seq=2)
    out = StringIO()
    call_command("datagate_journal", "--prune", "--dry-run", stdout=out)
    assert "acme/notes: would prune 2 journal entries older than 30 d" in out.getvalue()
    assert JournalEntry.objects.count() == 2
    assert not MaintenanceRun.objects.exists()
    out = StringIO()
    call_command("datagate_journal", "--prune", "--days", "7", stdout=out)
    assert "acme/notes: pruned 2 journal entries older than 7 d" in out.getvalue()
    assert JournalEntry.objects.count() == 0
    run = MaintenanceRun.objects.get()
    assert (run.job, run.trigger, run.ok) == ("journal_prune", "command", True)
    assert run.finished_at is not None
    assert "pruned 2" in run.summary


def test_datagate_journal_size_estimates_rows_bytes_and_growth_per_day(
    collection: Collection, tenant: Any
) -> None:
    other, _ = collection_get_or_create(tenant=tenant, name="other")
    write(collection, *[f"doc-{n}" for n in range(14)])
    write(other, "x")
    age(collection, 20, up_to_seq=7)  # half of it is older than the 7-day window
    sizes = {s.collection: s for s in journal_size()}
    assert sizes["acme/notes"].rows == 14
    assert sizes["acme/notes"].rows_per_day == pytest.approx(1.0)
    assert sizes["acme/notes"].bytes > 14 * 10
    assert sizes["total"].rows == 15
    out = StringIO()
    call_command("datagate_journal", "--size", "--collection", "acme/other", stdout=out)
    assert "acme/other: 1 rows" in out.getvalue()
    assert "acme/notes" not in out.getvalue()


def test_datagate_journal_needs_one_action_and_sane_arguments() -> None:
    with pytest.raises(CommandError):
        call_command("datagate_journal")
    with pytest.raises(CommandError, match="must not be negative"):
        call_command("datagate_journal", "--prune", "--days", "-1")
