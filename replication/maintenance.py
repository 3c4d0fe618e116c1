"""Maintenance jobs: tombstone GC, journal retention, and the record of every run.

Plain synchronous functions with keyword-only arguments; the management commands
(`datagate_gc`, `datagate_journal`) and the in-server scheduler (`replication/scheduler.py`)
are thin shells over them. docs/maintenance.md explains the rules for operators.

Tombstone GC, per collection, in one transaction under the collection's row lock (the lock
every writer takes, so no change commits in between):
  - remove the tombstones whose delete time is older than the collection's TTL and that every
    connected replica has acknowledged (a replica offline gets a reset instead);
  - move `purge_seq` (the purge horizon) up to the highest seq collected: a replica whose
    markers are below it missed deletes that no longer exist, so its next pull is a full
    snapshot with `reset` (markers.pull_start);
  - move `purge_horizon_ms` up to the latest delete time collected: `batch_apply` treats a
    version of an id it does not hold, stamped at or before that time, as deleted (DG-7001), so
    a stale replica cannot bring a collected delete back.

Journal retention prunes entries older than JOURNAL_RETENTION_DAYS, but never those above the
lowest position an online replica has acknowledged, and moves `journal_pruned_seq` so
`datagate_verify` knows which entries may be missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Min, Sum
from django.db.models.functions import Length
from django.utils import timezone

from core.errors import DataGateError, ErrorCode
from replication.models import (
    Collection,
    JournalEntry,
    MaintenanceJob,
    MaintenanceRun,
    Replica,
    Tombstone,
)
from replication.ranges import Deltas, bucket_deltas_apply, version_delta
from replication.services.engine import now_ms
from replication.services.events import error_event_record

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
# Tombstones deleted per statement: well below SQLite's and PostgreSQL's parameter limits.
DELETE_BATCH = 500
# Fixed bytes per journal row besides its text columns (ids, seq, times, row header, index
# entries): an estimate for `datagate_journal --size` where the database cannot measure.
JOURNAL_ROW_OVERHEAD = 120


# --- tombstone GC ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GcReport:
    """What GC did (or, with dry_run, would do) to one collection."""

    collection: str
    ttl_days: int
    cutoff_ms: int
    collected: int
    purge_seq_before: int
    purge_seq_after: int
    horizon_ms_before: int
    horizon_ms_after: int
    held_back: int
    dry_run: bool

    def line(self) -> str:
        verb = "would collect" if self.dry_run else "collected"
        held = (
            f"; {self.held_back} expired kept until every online replica has acknowledged them"
            if self.held_back
            else ""
        )
        if self.collected == 0:
            return f"{self.collection}: nothing to collect (TTL {self.ttl_days} d){held}"
        return (
            f"{self.collection}: {verb} {self.collected} tombstone(s) older than "
            f"{self.ttl_days} d; purge_seq {self.purge_seq_before} -> {self.purge_seq_after}, "
            f"purge horizon {_ms_text(self.horizon_ms_before)} -> "
            f"{_ms_text(self.horizon_ms_after)}{held}"
        )


def _ms_text(ms: int) -> str:
    if ms <= 0:
        return "none"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _online_floor(*, collection_id: int, seen_since_ms: int) -> int | None:
    """The lowest position acknowledged by a replica connected now (None: none is).

    A connected replica is pulling or live from its position; a tombstone above it that GC
    removed now would never reach it (its pages or feeds read what exists), and its markers
    would then pass the horizon without a reset. So GC waits for its ack. A row left online by
    a killed process stops counting once it has not been seen for the TTL.
    """
    seen_since = datetime.fromtimestamp(seen_since_ms / 1000, tz=UTC)
    value = Replica.objects.filter(
        collection_id=collection_id, online=True, last_seen__gte=seen_since
    ).aggregate(floor=Min("last_acked_seq"))["floor"]
    return None if value is None else int(value)


def tombstones_collect(
    *, collection_id: int, dry_run: bool = False, at_ms: int | None = None
) -> GcReport:
    """Collect one collection's expired tombstones and move its purge horizon forward."""
    now = now_ms() if at_ms is None else at_ms
    with transaction.atomic():
        collection = (
            Collection.objects.select_for_update().select_related("tenant").get(pk=collection_id)
        )
        ttl_days = collection.effective_tombstone_ttl_days
        cutoff = now - ttl_days * DAY_MS
        old = Tombstone.objects.filter(collection_id=collection_id, deleted_at__lte=cutoff)
        floor = _online_floor(collection_id=collection_id, seen_since_ms=cutoff)
        expired = old if floor is None else old.filter(seq__lte=floor)
        summary = expired.aggregate(n=Count("id"), top_seq=Max("seq"), top_time=Max("deleted_at"))
        collected = int(summary["n"])
        held_back = 0 if floor is None else old.count() - collected
        purge_seq = max(collection.purge_seq, summary["top_seq"] or 0)
        horizon = max(collection.purge_horizon_ms, summary["top_time"] or 0)
        report = GcReport(
            collection=str(collection),
            ttl_days=ttl_days,
            cutoff_ms=cutoff,
            collected=collected,
            purge_seq_before=collection.purge_seq,
            purge_seq_after=purge_seq,
            horizon_ms_before=collection.purge_horizon_ms,
            horizon_ms_after=horizon,
            held_back=held_back,
            dry_run=dry_run,
        )
        if dry_run or collected == 0:
            return report
        # Delete by primary key in batches, each batch taken from the same expired set.
        # Each collected tombstone leaves the range summaries too (replication/ranges.py).
        deltas: Deltas = {}
        while True:
            rows = list(
                expired.order_by("seq").values_list("pk", "doc_id", "revision", "deleted_at")[
                    :DELETE_BATCH
                ]
            )
            if not rows:
                break
            Tombstone.objects.filter(pk__in=[row[0] for row in rows]).delete()
            for _, doc_id, revision, deleted_at in rows:
                version_delta(deltas, doc_id, (revision, deleted_at, True), None)
        bucket_deltas_apply(collection_id, deltas)
        Collection.objects.filter(pk=collection_id).update(
            purge_seq=purge_seq, purge_horizon_ms=horizon
        )
    logger.info("%s", report.line())
    return report


def collections_select(*, names: Iterable[str] = ()) -> list[Collection]:
    """Collections by `tenant/name` (all when `names` is empty); unknown names raise KeyError."""
    wanted = list(names)
    queryset = Collection.objects.select_related("tenant").order_by("tenant__slug", "name")
    if not wanted:
        return list(queryset)
    found: list[Collection] = []
    for full_name in wanted:
        tenant_slug, _, name = full_name.partition("/")
        collection = queryset.filter(tenant__slug=tenant_slug, name=name).first()
        if collection is None:
            raise KeyError(full_name)
        found.append(collection)
    return found


def tombstones_collect_all(
    *, collection_ids: Iterable[int] | None = None, dry_run: bool = False, at_ms: int | None = None
) -> list[GcReport]:
    """GC every collection (or the given ones), one transaction per collection."""
    ids = (
        list(collection_ids)
        if collection_ids is not None
        else list(Collection.objects.order_by("pk").values_list("pk", flat=True))
    )
    return [tombstones_collect(collection_id=pk, dry_run=dry_run, at_ms=at_ms) for pk in ids]


# --- journal retention ----------------------------------------------------------------------


@dataclass(frozen=True)
class PruneReport:
    """What journal pruning did (or would do) to one collection."""

    collection: str
    retention_days: int
    pruned: int
    kept_for_replicas: int
    pruned_seq_before: int
    pruned_seq_after: int
    dry_run: bool

    def line(self) -> str:
        verb = "would prune" if self.dry_run else "pruned"
        text = (
            f"{self.collection}: {verb} {self.pruned} journal entr"
            f"{'y' if self.pruned == 1 else 'ies'} older than {self.retention_days} d"
        )
        if self.kept_for_replicas:
            text += f", kept {self.kept_for_replicas} an online replica has not acknowledged"
        if self.pruned:
            text += f"; retention boundary seq {self.pruned_seq_before} -> {self.pruned_seq_after}"
        return text


def journal_floor_seq(*, collection_id: int) -> int | None:
    """The lowest seq an online replica has acknowledged (None: no replica online)."""
    value = Replica.objects.filter(collection_id=collection_id, online=True).aggregate(
        floor=Min("last_acked_seq")
    )["floor"]
    return None if value is None else int(value)


def journal_prune(
    *, collection_id: int, dry_run: bool = False, retention_days: int | None = None
) -> PruneReport:
    """Delete one collection's journal entries older than the retention, keeping what online
    replicas have not acknowledged yet."""
    with transaction.atomic():
        collection = (
            Collection.objects.select_for_update().select_related("tenant").get(pk=collection_id)
        )
        # An explicit retention (a command's --days) wins over the collection's own setting.
        days = int(
            collection.effective_journal_retention_days
            if retention_days is None
            else retention_days
        )
        cutoff = timezone.now() - timedelta(days=days)
        old = JournalEntry.objects.filter(collection_id=collection_id, created_at__lt=cutoff)
        floor = journal_floor_seq(collection_id=collection_id)
        prunable = old if floor is None else old.filter(seq__lte=floor)
        old_count = old.count()
        summary = prunable.aggregate(n=Count("id"), top=Max("seq"))
        pruned = int(summary["n"])
        pruned_seq = max(collection.journal_pruned_seq, summary["top"] or 0)
        report = PruneReport(
            collection=str(collection),
            retention_days=days,
            pruned=pruned,
            kept_for_replicas=old_count - pruned,
            pruned_seq_before=collection.journal_pruned_seq,
            pruned_seq_after=pruned_seq,
            dry_run=dry_run,
        )
        if dry_run or pruned == 0:
            return report
        while True:
            batch = list(prunable.order_by("seq").values_list("pk", flat=True)[:DELETE_BATCH])
            if not batch:
                break
            JournalEntry.objects.filter(pk__in=batch).delete()
        Collection.objects.filter(pk=collection_id).update(journal_pruned_seq=pruned_seq)
    logger.info("%s", report.line())
    return report


def journal_prune_all(
    *,
    collection_ids: Iterable[int] | None = None,
    dry_run: bool = False,
    retention_days: int | None = None,
) -> list[PruneReport]:
    ids = (
        list(collection_ids)
        if collection_ids is not None
        else list(Collection.objects.order_by("pk").values_list("pk", flat=True))
    )
    return [
        journal_prune(collection_id=pk, dry_run=dry_run, retention_days=retention_days)
        for pk in ids
    ]


@dataclass(frozen=True)
class JournalSize:
    """The journal's size: rows, bytes (measured or estimated) and growth per day."""

    collection: str
    rows: int
    bytes: int
    rows_per_day: float
    bytes_per_day: float

    def line(self) -> str:
        return (
            f"{self.collection}: {self.rows} rows, {_bytes_text(self.bytes)}; growing "
            f"{self.rows_per_day:.0f} rows ({_bytes_text(int(self.bytes_per_day))}) per day"
        )


def _bytes_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _journal_table_bytes() -> int | None:
    """The journal table's size on disk (with indexes) where the database can tell."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size(%s)", [JournalEntry._meta.db_table])
        row = cursor.fetchone()
    return int(row[0]) if row else None


def journal_size(
    *, collection_ids: Iterable[int] | None = None, window_days: int = 7
) -> list[JournalSize]:
    """Estimate each collection's journal size and its growth per day over the last days.

    Bytes are the text columns' lengths plus a fixed overhead per row; on PostgreSQL the
    estimate is scaled to the table's measured size on disk. The last line is the total.
    """
    since = timezone.now() - timedelta(days=window_days)
    ids = (
        list(collection_ids)
        if collection_ids is not None
        else list(Collection.objects.order_by("pk").values_list("pk", flat=True))
    )
    text_bytes = Length("doc_id") + Length("origin") + Length("message_id") + Length("operation")
    rows: list[tuple[str, int, int, int, int]] = []
    for collection in Collection.objects.filter(pk__in=ids).select_related("tenant"):
        entries = JournalEntry.objects.filter(collection_id=collection.pk)
        total = entries.aggregate(n=Count("id"), text=Sum(text_bytes))
        recent = entries.filter(created_at__gte=since).aggregate(
            n=Count("id"), text=Sum(text_bytes)
        )
        rows.append(
            (
                str(collection),
                int(total["n"]),
                int(total["text"] or 0) + JOURNAL_ROW_OVERHEAD * int(total["n"]),
                int(recent["n"]),
                int(recent["text"] or 0) + JOURNAL_ROW_OVERHEAD * int(recent["n"]),
            )
        )
    estimated = sum(r[2] for r in rows)
    measured = _journal_table_bytes() if collection_ids is None else None
    scale = measured / estimated if measured and estimated else 1.0
    sizes = [
        JournalSize(
            name, n, int(size * scale), recent_n / window_days, recent_b * scale / window_days
        )
        for name, n, size, recent_n, recent_b in rows
    ]
    sizes.append(
        JournalSize(
            "total",
            sum(s.rows for s in sizes),
            measured if measured else sum(s.bytes for s in sizes),
            sum(s.rows_per_day for s in sizes),
            sum(s.bytes_per_day for s in sizes),
        )
    )
    return sizes


# --- the record of runs ---------------------------------------------------------------------


def maintenance_run(
    *, job: MaintenanceJob, trigger: str, action: Callable[[], list[Any]]
) -> tuple[MaintenanceRun, list[Any]]:
    """Run a job, recording when it started and finished, what it did, and any error.

    `action` returns a list of report dataclasses (each with `line()`). A failing job is
    recorded with its error (and as a DG-7002 error event) and re-raised.
    """
    run = MaintenanceRun.objects.create(job=job, trigger=trigger[:16], started_at=timezone.now())
    try:
        reports = action()
    except Exception as exc:
        error = DataGateError(ErrorCode.MAINTENANCE_FAILED, job=job.value, detail=repr(exc))
        MaintenanceRun.objects.filter(pk=run.pk).update(
            finished_at=timezone.now(), ok=False, error=error.text, summary=error.text[:300]
        )
        error_event_record(error=error, context={"job": job.value, "run": run.pk})
        raise
    changed = [r for r in reports if _worth_saying(r)]
    summary = "; ".join(r.line() for r in changed) or f"nothing to do in {len(reports)} collections"
    MaintenanceRun.objects.filter(pk=run.pk).update(
        finished_at=timezone.now(),
        ok=True,
        summary=summary[:300],
        result={"reports": [asdict(r) for r in reports]},
    )
    run.refresh_from_db()
    return run, reports


def _worth_saying(report: Any) -> bool:
    """A report that changed something (collections where GC or pruning did nothing are not)."""
    for quiet_when_zero in ("collected", "pruned"):
        if hasattr(report, quiet_when_zero):
            return bool(getattr(report, quiet_when_zero))
    return True


def maintenance_runs_latest(*, limit: int = 20) -> list[MaintenanceRun]:
    """The latest runs of every job, newest first (for the console)."""
    return list(MaintenanceRun.objects.order_by("-started_at")[:limit])


def maintenance_due(*, job: MaintenanceJob, interval_seconds: float) -> bool:
    """True unless a run of `job` started within the last interval (by any process)."""
    recent = timezone.now() - timedelta(seconds=interval_seconds * 0.9)
    return not MaintenanceRun.objects.filter(job=job, started_at__gte=recent).exists()


def maintenance_scheduled_run(*, interval_seconds: float) -> list[MaintenanceRun]:
    """One round of the in-server schedule: GC, then journal pruning, each when due."""
    runs: list[MaintenanceRun] = []
    if maintenance_due(job=MaintenanceJob.GC, interval_seconds=interval_seconds):
        run, _ = maintenance_run(
            job=MaintenanceJob.GC, trigger="schedule", action=tombstones_collect_all
        )
        runs.append(run)
    if maintenance_due(job=MaintenanceJob.JOURNAL_PRUNE, interval_seconds=interval_seconds):
        run, _ = maintenance_run(
            job=MaintenanceJob.JOURNAL_PRUNE, trigger="schedule", action=journal_prune_all
        )
        runs.append(run)
    return runs
