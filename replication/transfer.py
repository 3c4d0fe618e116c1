"""Export and import of a collection as JSON lines (`datagate_export`, `datagate_import`).

The file is one JSON object per line: a header with the collection's metadata, then every
document and every tombstone with the seq it had:

    {"kind": "header", "format": "datagate-collection", "version": 1, "tenant": ..., ...}
    {"kind": "document", "seq": 12, "doc": {"_id": ..., "_revision": ..., "_modified": ...,
                                            "_origin": ..., <the user's fields>}}
    {"kind": "tombstone", "seq": 13, "id": ..., "deleted": <ms>, "revision": ..., "origin": ...}

The export reads under the collection's row lock, so it is one consistent point in time.

An import restores the collection's content as of the export (docs/maintenance.md,
"Restoring"): every row gets a fresh seq above both the current counter and the exported one,
with a journal entry, so the counter only moves forward; the collection gets a new epoch and a
purge horizon at the new counter, so every replica that synced before is sent a full snapshot
with `reset` and, seeing the epoch change, pushes again what the server lost
(markers.pull_start, PROTOCOL.md section 4, step 4). The purge horizon time is kept (the later
of the current one and the exported one), so the restore cannot bring back a collected delete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from django.db import transaction
from django.utils import timezone

from accounts.access import System, access_collection_admin
from accounts.models import Tenant
from core.door import id_check, limits_from_settings
from core.errors import DataGateError, ErrorCode
from replication.changes import MAX_INT, Version, parse_document, version_to_wire
from replication.doorbell import ring_on_commit
from replication.models import Collection, Document, JournalEntry, Operation, Tombstone
from replication.protocol.conflicts import WRITE
from replication.protocol.markers import new_epoch
from replication.protocol.ranges import Header
from replication.ranges import ranges_replace_from
from replication.rows import statistics_refresh
from replication.services.engine import collection_get_or_create

FORMAT = "datagate-collection"
VERSION = 1
READ_CHUNK = 2000
WRITE_BATCH = 500
IMPORT_MESSAGE_ID = "datagate-import"


@dataclass(frozen=True)
class ExportReport:
    collection: str
    documents: int
    tombstones: int
    last_seq: int
    epoch: int

    def line(self) -> str:
        return (
            f"{self.collection}: exported {self.documents} documents and {self.tombstones} "
            f"tombstones at seq {self.last_seq} (epoch {self.epoch})"
        )


@dataclass(frozen=True)
class ImportReport:
    collection: str
    documents: int
    tombstones: int
    exported_at: str
    last_seq_before: int
    last_seq_after: int
    epoch_before: int
    epoch_after: int
    created: bool

    def line(self) -> str:
        return (
            f"{self.collection}: restored {self.documents} documents and {self.tombstones} "
            f"tombstones as exported at {self.exported_at}; seq {self.last_seq_before} -> "
            f"{self.last_seq_after}, epoch {self.epoch_before} -> {self.epoch_after} "
            "(replicas get a full snapshot and push again what is missing)"
        )


class TextSink(Protocol):
    def write(self, text: str, /) -> Any: ...


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def collection_export(*, collection_id: int, out: TextSink) -> ExportReport:
    """Write one collection as JSON lines to `out`, as one consistent point in time."""
    with transaction.atomic():
        # The writers' lock: nothing commits to the collection while it is read.
        collection = (
            Collection.objects.select_for_update().select_related("tenant").get(pk=collection_id)
        )
        documents = Document.objects.filter(collection_id=collection_id)
        tombstones = Tombstone.objects.filter(collection_id=collection_id)
        counts = (documents.count(), tombstones.count())
        header: dict[str, Any] = {
            "kind": "header",
            "format": FORMAT,
            "version": VERSION,
            "tenant": collection.tenant.slug,
            "collection": collection.name,
            "exported_at": timezone.now().isoformat(),
            "last_seq": collection.last_seq,
            "purge_seq": collection.purge_seq,
            "purge_horizon_ms": collection.purge_horizon_ms,
            "epoch": collection.epoch,
            "tombstone_ttl_days": collection.tombstone_ttl_days,
            "documents": counts[0],
            "tombstones": counts[1],
        }
        out.write(_line(header))
        for doc in documents.order_by("seq").iterator(chunk_size=READ_CHUNK):
            body = doc.body if isinstance(doc.body, dict) else {}
            version = Version(doc.doc_id, WRITE, doc.modified, doc.revision, doc.origin, body)
            wire = version_to_wire(version)
            out.write(_line({"kind": "document", "seq": doc.seq, "doc": wire}))
        for tomb in tombstones.order_by("seq").iterator(chunk_size=READ_CHUNK):
            out.write(
                _line(
                    {
                        "kind": "tombstone",
                        "seq": tomb.seq,
                        "id": tomb.doc_id,
                        "deleted": tomb.deleted_at,
                        "revision": tomb.revision,
                        "origin": tomb.origin,
                    }
                )
            )
    return ExportReport(
        collection=str(collection),
        documents=counts[0],
        tombstones=counts[1],
        last_seq=collection.last_seq,
        epoch=collection.epoch,
    )


# --- import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    seq: int
    doc_id: str
    deleted: bool
    modified: int
    revision: int
    origin: str
    body: dict[str, Any] | None


def _bad(line: int, detail: str) -> DataGateError:
    return DataGateError(ErrorCode.EXPORT_INVALID, line=line, detail=detail)


def _int_field(raw: dict[str, Any], name: str, line: int, minimum: int = 0) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_INT:
        raise _bad(line, f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_header(text: str) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(1, f"not JSON ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:
        raise _bad(1, f"not JSON the server can read ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("kind") != "header":
        raise _bad(1, "the first line must be the export header")
    if header.get("format") != FORMAT:
        raise _bad(1, f"format {header.get('format')!r} is not {FORMAT!r}")
    if header.get("version") != VERSION:
        raise _bad(1, f"version {header.get('version')!r} is not supported (only {VERSION})")
    for name in ("last_seq", "purge_horizon_ms"):
        _int_field(header, name, 1)
    ttl = header.get("tombstone_ttl_days")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1):
        raise _bad(1, f"tombstone_ttl_days must be null or a positive integer, got {ttl!r}")
    return header


def _parse_row(text: str, line: int) -> _Row:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(line, f"not JSON ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:  # a 5000-digit number; nesting too deep
        raise _bad(line, f"not JSON the server can read ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise _bad(line, "not a JSON object")
    seq = _int_field(raw, "seq", line, minimum=1)
    if raw.get("kind") == "document":
        try:
            version = parse_document(
                raw.get("doc"),
                index=line,
                default_origin="",
                now_ms=MAX_INT,
                max_skew_ms=0,
                limits=limits_from_settings(),
            )
        except DataGateError as error:
            raise _bad(line, error.text) from error
        return _Row(
            seq,
            version.doc_id,
            False,
            version.modified,
            version.revision,
            version.origin,
            version.body,
        )
    if raw.get("kind") == "tombstone":
        try:  # the door's id rules (core.door)
            doc_id = id_check(raw.get("id"))
            origin = id_check(raw.get("origin", ""), origin=True, doc_id=doc_id)
        except DataGateError as error:
            raise _bad(line, f"tombstone: {error.text}") from error
        deleted = _int_field(raw, "deleted", line)
        revision = _int_field(raw, "revision", line, minimum=1)
        return _Row(seq, doc_id, True, deleted, revision, origin, None)
    raise _bad(line, f"unknown kind {raw.get('kind')!r}")


def export_read(source: IO[str]) -> tuple[dict[str, Any], list[_Row]]:
    """Parse and check a whole export file; raise DG-7003 naming the first bad line."""
    lines: Iterator[tuple[int, str]] = (
        (number, text) for number, text in enumerate(source, start=1) if text.strip()
    )
    first = next(lines, None)
    if first is None:
        raise _bad(1, "the file is empty")
    header = _parse_header(first[1])
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    for number, text in lines:
        row = _parse_row(text, number)
        if row.doc_id in seen:
            raise _bad(number, f"{row.doc_id!r} appears again (first on line {seen[row.doc_id]})")
        seen[row.doc_id] = number
        rows.append(row)
    for kind, deleted in (("documents", False), ("tombstones", True)):
        expected = header.get(kind)
        found = sum(1 for row in rows if row.deleted is deleted)
        if expected is not None and expected != found:
            raise _bad(1, f"the header counts {expected} {kind}, the file holds {found}")
    return header, rows


def _import_allowed(*, actor: Any, tenant: Tenant, name: str) -> None:
    if isinstance(actor, System):
        return
    if actor is None or not hasattr(actor, "is_authenticated"):
        raise TypeError(f"actor must be a user or accounts.access.System, not {actor!r}")
    if not access_collection_admin(user=actor, tenant=tenant, collection_name=name):
        raise DataGateError(ErrorCode.READ_ONLY, user=actor.get_username())


# An import at least this large refreshes PostgreSQL's planner statistics when it commits
# (`rows.statistics_refresh`): the first catch-ups need not wait for autovacuum.
ANALYZE_AFTER_ROWS = 10_000


def collection_import(*, actor: Any, tenant: Tenant, name: str, source: IO[str]) -> ImportReport:
    """Restore a collection from an export (see the module docstring for what moves where).

    `actor` is required, as for every write (docs/access.md, "One door"): the command passes
    `accounts.access.System("datagate_import")`; a user must administer the collection, since
    an import replaces all of it (else DG-3002, before anything is read or written).
    """
    _import_allowed(actor=actor, tenant=tenant, name=name)
    header, rows = export_read(source)
    rows.sort(key=lambda row: row.seq)
    collection, created = collection_get_or_create(tenant=tenant, name=name)
    with transaction.atomic():
        collection = (
            Collection.objects.select_for_update().select_related("tenant").get(pk=collection.pk)
        )
        seq_before, epoch_before = collection.last_seq, collection.epoch
        Document.objects.filter(collection_id=collection.pk).delete()
        Tombstone.objects.filter(collection_id=collection.pk).delete()
        seq = max(collection.last_seq, int(header["last_seq"]))
        documents: list[Document] = []
        tombstones: list[Tombstone] = []
        journal: list[JournalEntry] = []
        for row in rows:
            seq += 1
            if row.deleted:
                tombstones.append(
                    Tombstone(
                        collection_id=collection.pk,
                        doc_id=row.doc_id,
                        deleted_at=row.modified,
                        revision=row.revision,
                        origin=row.origin,
                        seq=seq,
                    )
                )
            else:
                documents.append(
                    Document(
                        collection_id=collection.pk,
                        doc_id=row.doc_id,
                        body=row.body or {},
                        revision=row.revision,
                        modified=row.modified,
                        origin=row.origin,
                        seq=seq,
                    )
                )
            journal.append(
                JournalEntry(
                    collection_id=collection.pk,
                    seq=seq,
                    operation=Operation.DELETE if row.deleted else Operation.PUT,
                    doc_id=row.doc_id,
                    revision=row.revision,
                    modified=row.modified,
                    origin=row.origin,
                    message_id=IMPORT_MESSAGE_ID,
                )
            )
        Document.objects.bulk_create(documents, batch_size=WRITE_BATCH)
        Tombstone.objects.bulk_create(tombstones, batch_size=WRITE_BATCH)
        JournalEntry.objects.bulk_create(journal, batch_size=WRITE_BATCH)
        ranges_replace_from(
            collection_id=collection.pk,
            headers=[Header(r.doc_id, r.revision, r.modified, r.deleted) for r in rows],
        )
        if seq == collection.last_seq:
            seq += 1  # nothing to restore: still move on, so no replica's markers stay valid
        epoch = new_epoch()
        while epoch == epoch_before:
            epoch = new_epoch()
        Collection.objects.filter(pk=collection.pk).update(
            last_seq=seq,
            purge_seq=seq,
            purge_horizon_ms=max(collection.purge_horizon_ms, int(header["purge_horizon_ms"])),
            epoch=epoch,
            tombstone_ttl_days=header.get("tombstone_ttl_days"),
        )
        ring_on_commit(collection_id=collection.pk, seq=seq)
    if len(rows) >= ANALYZE_AFTER_ROWS:
        statistics_refresh([Document, Tombstone, JournalEntry])
    return ImportReport(
        collection=str(collection),
        documents=len(documents),
        tombstones=len(tombstones),
        exported_at=str(header.get("exported_at", "?")),
        last_seq_before=seq_before,
        last_seq_after=seq,
        epoch_before=epoch_before,
        epoch_after=epoch,
        created=created,
    )
