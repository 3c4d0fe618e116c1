"""The consistency check behind `manage.py datagate_verify`: a collection's invariants.

Read-only. Each broken invariant is reported as a `DataGateError` with its own 71xx code
(docs/errors.md says what each one means and what to do), at most `limit` examples per kind:

  DG-7101  a seq is used by more than one document/tombstone row
  DG-7102  a document, tombstone or journal seq is outside 1..last_seq
  DG-7103  an id is both a live document and a tombstone
  DG-7104  a document's/tombstone's seq has no journal entry (above the retention boundary)
  DG-7105  the journal entry at that seq records another id, revision or operation
  DG-7106  purge_seq or journal_pruned_seq is above last_seq
  DG-7107  a range summary bucket differs from the rows it summarises
  DG-7108  a stored document the document door would refuse (it cannot be served)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from core.door import printable
from core.errors import DataGateError, ErrorCode
from replication.models import Collection, Document, JournalEntry, Operation, Tombstone
from replication.protocol.ranges import hash_to_wire
from replication.quarantine import unservable_rows
from replication.ranges import ranges_mismatches

DEFAULT_LIMIT = 20


@dataclass
class VerifyReport:
    collection: str
    documents: int = 0
    tombstones: int = 0
    journal: int = 0
    problems: list[DataGateError] = field(default_factory=list)
    # code -> how many problems of that kind were found beyond the examples listed
    more: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        if self.ok:
            return [
                f"{self.collection}: ok ({self.documents} documents, {self.tombstones} "
                f"tombstones, {self.journal} journal entries)"
            ]
        lines = [problem.text for problem in self.problems]
        lines += [f"{self.collection}: {code}: and {n} more" for code, n in self.more.items()]
        return lines


class _Collector:
    def __init__(self, report: VerifyReport, limit: int) -> None:
        self.report = report
        self.limit = limit
        self.counts: dict[ErrorCode, int] = {}

    def add(self, error: ErrorCode, **params: Any) -> None:
        seen = self.counts.get(error, 0) + 1
        self.counts[error] = seen
        if seen <= self.limit:
            self.report.problems.append(DataGateError(error, **params))
        else:
            self._more(error, 1)

    def sample(self, error: ErrorCode, rows: QuerySet[Any, Any]) -> list[Any]:
        """At most `limit` rows of a query of problems; the rest are only counted."""
        taken = list(rows[: self.limit])
        if len(taken) == self.limit:
            self._more(error, rows.count() - len(taken))
        return taken

    def _more(self, error: ErrorCode, count: int) -> None:
        if count > 0:
            self.report.more[error.code] = self.report.more.get(error.code, 0) + count


def collection_verify(*, collection_id: int, limit: int = DEFAULT_LIMIT) -> VerifyReport:
    """Check one collection's invariants; the report lists what is wrong, plainly."""
    collection = Collection.objects.select_related("tenant").get(pk=collection_id)
    name = str(collection)
    last_seq = collection.last_seq
    documents = Document.objects.filter(collection_id=collection_id)
    tombstones = Tombstone.objects.filter(collection_id=collection_id)
    journal = JournalEntry.objects.filter(collection_id=collection_id)
    report = VerifyReport(
        collection=name,
        documents=documents.count(),
        tombstones=tombstones.count(),
        journal=journal.count(),
    )
    found = _Collector(report, limit)

    for marker in ("purge_seq", "journal_pruned_seq"):
        value = getattr(collection, marker)
        if value > last_seq:
            found.add(
                ErrorCode.MARKER_AHEAD,
                collection=name,
                field=marker,
                value=value,
                last_seq=last_seq,
            )

    out_of_range = Q(seq__lt=1) | Q(seq__gt=last_seq)
    for table, rows in (("document", documents), ("tombstone", tombstones)):
        bad = rows.filter(out_of_range).order_by("seq").values_list("doc_id", "seq")
        for doc_id, seq in found.sample(ErrorCode.SEQ_OUT_OF_RANGE, bad):
            found.add(
                ErrorCode.SEQ_OUT_OF_RANGE,
                collection=name,
                table=table,
                doc_id=doc_id,
                seq=seq,
                last_seq=last_seq,
            )
    bad_journal = journal.filter(out_of_range).order_by("seq").values_list("doc_id", "seq")
    for doc_id, seq in found.sample(ErrorCode.SEQ_OUT_OF_RANGE, bad_journal):
        found.add(
            ErrorCode.SEQ_OUT_OF_RANGE,
            collection=name,
            table="journal entry for",
            doc_id=doc_id,
            seq=seq,
            last_seq=last_seq,
        )

    _check_duplicate_seqs(found, name, documents, tombstones)

    both = documents.filter(doc_id__in=tombstones.values("doc_id")).values_list("doc_id", flat=True)
    for doc_id in found.sample(ErrorCode.LIVE_AND_TOMBSTONED, both.order_by("doc_id")):
        found.add(ErrorCode.LIVE_AND_TOMBSTONED, collection=name, doc_id=doc_id)

    for row in unservable_rows(collection_id=collection_id):
        found.add(
            ErrorCode.UNSERVABLE_STORED,
            collection=name,
            doc_id=printable(row.doc_id),
            reason=row.reason + (" (tombstone)" if row.tombstone else ""),
        )
    _check_journal(found, name, collection, documents, Operation.PUT, "document")
    _check_journal(found, name, collection, tombstones, Operation.DELETE, "tombstone")
    for bucket, stored, actual in ranges_mismatches(collection_id):
        found.add(
            ErrorCode.RANGES_MISMATCH,
            collection=name,
            bucket=bucket,
            stored=f"{stored.count}/{hash_to_wire(stored.hash)}",
            actual=f"{actual.count}/{hash_to_wire(actual.hash)}",
        )
    return report


def _check_duplicate_seqs(
    found: _Collector,
    name: str,
    documents: QuerySet[Document],
    tombstones: QuerySet[Tombstone],
) -> None:
    duplicated: set[int] = set()
    for rows in (documents, tombstones):
        dups = rows.values("seq").annotate(n=Count("id")).filter(n__gt=1)
        dups = dups.order_by("seq")
        duplicated.update(int(row["seq"]) for row in found.sample(ErrorCode.SEQ_DUPLICATE, dups))
    crossing = documents.filter(seq__in=tombstones.values("seq")).values_list("seq", flat=True)
    duplicated.update(found.sample(ErrorCode.SEQ_DUPLICATE, crossing.order_by("seq")))
    for seq in sorted(duplicated):
        described = [
            f"document {d!r}"
            for d in documents.filter(seq=seq).order_by("doc_id").values_list("doc_id", flat=True)
        ]
        described += [
            f"tombstone {t!r}"
            for t in tombstones.filter(seq=seq).order_by("doc_id").values_list("doc_id", flat=True)
        ]
        found.add(
            ErrorCode.SEQ_DUPLICATE,
            collection=name,
            seq=seq,
            count=len(described),
            rows=", ".join(described),
        )


def _check_journal(
    found: _Collector,
    name: str,
    collection: Collection,
    rows: QuerySet[Document] | QuerySet[Tombstone],
    operation: Operation,
    table: str,
) -> None:
    """Every row above the retention boundary has the journal entry that wrote it."""
    matching = JournalEntry.objects.filter(
        collection_id=collection.pk,
        seq=OuterRef("seq"),
        doc_id=OuterRef("doc_id"),
        revision=OuterRef("revision"),
        operation=operation,
    )
    unmatched = (
        rows.filter(seq__gt=collection.journal_pruned_seq)
        .annotate(journalled=Exists(matching))
        .filter(journalled=False)
        .order_by("seq")
        .values_list("doc_id", "seq", "revision")
    )
    error = ErrorCode.JOURNAL_MISSING  # the mismatches among them are counted alike
    for doc_id, seq, revision in found.sample(error, unmatched):
        entry = JournalEntry.objects.filter(collection_id=collection.pk, seq=seq).first()
        if entry is None:
            found.add(
                ErrorCode.JOURNAL_MISSING, collection=name, table=table, doc_id=doc_id, seq=seq
            )
            continue
        found.add(
            ErrorCode.JOURNAL_MISMATCH,
            collection=name,
            seq=seq,
            journal=f"{entry.operation} {entry.doc_id!r} rev {entry.revision}",
            table=table,
            stored=f"{operation.value} {doc_id!r} rev {revision}",
        )
