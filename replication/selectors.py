"""Every read of the storage engine that more than one caller needs.

The reads for an acting user that several interfaces share (the HTTP API and GraphQL) decide
access here, once, through `accounts.access`: which collections of a tenant a user sees, a
collection they may read, what of it they may read, whether they may read one document. A
tenant, collection or document the user may not read looks exactly like one that does not
exist (DG-8001, DG-3001), as on the websocket.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from accounts import access
from accounts.access import DocumentPredicate
from accounts.models import Tenant
from core.errors import DataGateError, ErrorCode
from replication.changes import Version, wire_document
from replication.models import Collection, Document, Tombstone
from replication.protocol.conflicts import DELETE, WRITE
from replication.protocol.g3 import Held
from replication.rows import BODY_NONE, BODY_TEXT, BODY_VALUE, collection_row, seq_range


@dataclass(frozen=True, slots=True)
class Change:
    """The latest change of one document id, at its sequence number."""

    seq: int
    version: Version

    @property
    def doc_id(self) -> str:
        return self.version.doc_id

    @property
    def deleted(self) -> bool:
        return self.version.kind == DELETE


def changes_since(
    *,
    collection_id: int,
    after_seq: int,
    limit: int,
    up_to_seq: int | None = None,
    bodies: bool = True,
    as_text: bool = False,
) -> list[Change]:
    """The changes with `after_seq < seq <= up_to_seq`, in seq order, at most `limit`.

    Each document id appears once, at its latest change (documents and tombstones are
    compacted), so paging by the last seq returned never misses or repeats an id that
    changed before the page was read. Rows are read as plain values, not model instances;
    with `bodies=False` the documents' bodies are not read at all (their versions carry
    None), for callers that list changes without their contents (CouchDB's `_changes`).

    With `as_text=True` each body is read as the JSON text the database holds (`Version.text`,
    body None) and never decoded: the pull and live feeds splice it into their frames
    (`changes.wire_document`). Decoding 100,000 bodies only to encode them again was most of
    a catch-up's time (bench/RESULTS.md, "Issue 21: catch-up"). The rows are read with
    plain statements (`replication.rows.seq_range`), not querysets compiled on every page.
    """

    def window(model: type[Document] | type[Tombstone], body: str = BODY_NONE) -> list[Any]:
        return seq_range(
            model,
            collection_id=collection_id,
            after_seq=after_seq,
            up_to_seq=up_to_seq,
            limit=limit,
            body=body,
        )

    tomb_changes = [
        Change(seq, Version(doc_id, DELETE, deleted_at, revision, origin, None))
        for seq, doc_id, deleted_at, revision, origin in window(Tombstone)
    ]
    if not bodies:
        doc_changes = [
            Change(seq, Version(doc_id, WRITE, modified, revision, origin, None))
            for seq, doc_id, modified, revision, origin in window(Document)
        ]
    elif as_text:
        doc_changes = [
            Change(seq, Version(doc_id, WRITE, modified, revision, origin, None, text))
            for seq, doc_id, modified, revision, origin, text in window(Document, BODY_TEXT)
        ]
    else:
        doc_changes = [
            Change(seq, Version(doc_id, WRITE, modified, revision, origin, body))
            for seq, doc_id, modified, revision, origin, body in window(Document, BODY_VALUE)
        ]
    if not tomb_changes:  # a first catch-up has none: no merge
        return doc_changes
    merged: Iterator[Change] = heapq.merge(doc_changes, tomb_changes, key=lambda c: c.seq)
    return [change for change, _ in zip(merged, range(limit), strict=False)]


def feed_from_changes(changes: list[Change]) -> dict[str, Any]:
    """The wire `feed` for a list of changes (documents read as text are spliced, not decoded:
    `changes.wire_document`)."""
    change_set = [wire_document(c.version) for c in changes if not c.deleted]
    tombstone_map = {c.doc_id: c.version.modified for c in changes if c.deleted}
    return {"changeSet": change_set, "tombstoneMap": tombstone_map}


def collection_position(*, collection_id: int) -> tuple[int, int]:
    """(last_seq, purge_seq) of a collection."""
    last_seq, purge_seq = collection_row(collection_id, ("last_seq", "purge_seq"))
    return int(last_seq), int(purge_seq)


def collection_state(*, collection_id: int) -> dict[str, Any]:
    """The whole stored state (documents and tombstones), for comparisons and checks."""
    documents = {
        d.doc_id: {"body": d.body, "revision": d.revision, "modified": d.modified}
        for d in Document.objects.filter(collection_id=collection_id)
    }
    tombstones = {
        t.doc_id: t.deleted_at for t in Tombstone.objects.filter(collection_id=collection_id)
    }
    return {"documents": documents, "tombstones": tombstones}


@dataclass(frozen=True, slots=True)
class ChangePage:
    """A page of changes: it covers every seq in (after_seq, covered], read at `head`."""

    changes: list[Change]
    covered: int
    head: int
    epoch: int


def change_page(
    *,
    collection_id: int,
    after_seq: int,
    limit: int,
    up_to_seq: int | None = None,
    bodies: bool = True,
    as_text: bool = False,
) -> ChangePage:
    """The next page after `after_seq` (at most `limit` changes, up to `up_to_seq`).

    The collection's counter is read first: every change at or below it has committed, so the
    page covers (after_seq, covered] without a gap (docs/decisions/0002).
    """
    last_seq, epoch = collection_row(collection_id, ("last_seq", "epoch"))
    bound = last_seq if up_to_seq is None else min(up_to_seq, last_seq)
    if bound <= after_seq:
        return ChangePage([], after_seq, int(last_seq), int(epoch))
    changes = changes_since(
        collection_id=collection_id,
        after_seq=after_seq,
        limit=limit,
        up_to_seq=bound,
        bodies=bodies,
        as_text=as_text,
    )
    covered = changes[-1].seq if len(changes) >= limit else bound
    return ChangePage(changes, covered, int(last_seq), int(epoch))


def collection_head(*, collection_id: int) -> tuple[int, int, int]:
    """(last_seq, purge_seq, epoch) of a collection: where a pull starts and ends."""
    last_seq, purge_seq, epoch = collection_row(collection_id, ("last_seq", "purge_seq", "epoch"))
    return int(last_seq), int(purge_seq), int(epoch)


def document_stamps(*, collection_id: int) -> list[tuple[str, int]]:
    """(doc_id, _modified) of every live document: what a replica may hold of the collection."""
    return list(
        Document.objects.filter(collection_id=collection_id).values_list("doc_id", "modified")
    )


def g3_versions(*, collection_id: int, ids: list[str]) -> dict[str, Held | None]:
    """The stored document of each id (None for a tombstone or nothing): what a G3 session
    sends back for the changes it refused (replication/protocol/g3.py, `corrections`)."""
    held: dict[str, Held | None] = dict.fromkeys(ids)
    for start in range(0, len(ids), 500):
        rows = Document.objects.filter(
            collection_id=collection_id, doc_id__in=ids[start : start + 500]
        ).values_list("doc_id", "body", "revision", "modified")
        for doc_id, body, revision, modified in rows:
            held[doc_id] = Held(body or {}, revision, modified)
    return held


# --- reads for an acting user ----------------------------------------------------------------


def collections_visible(*, user: Any, slug: str) -> list[Collection]:
    """The tenant's collections the user may read (by role or by a collection grant), or
    DG-8001 if the tenant does not exist or the user may read nothing of it."""
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise DataGateError(ErrorCode.NOT_FOUND, what=f"tenant {slug[:64]!r}")
    collections = [
        c
        for c in Collection.objects.filter(tenant=tenant).select_related("tenant").order_by("name")
        if access.access_collection_read(
            user=user, tenant=tenant, collection_name=c.name, collection=c
        )
    ]
    if not collections and not access.access_tenant_read(user=user, tenant=tenant):
        raise DataGateError(ErrorCode.NOT_FOUND, what=f"tenant {slug[:64]!r}")
    return collections


def collection_for_reader(*, user: Any, tenant_slug: str, name: str) -> Collection:
    """The collection, or DG-3001 whether it or its tenant is missing or it is unreadable
    (never tell which, as on the websocket)."""
    collection = (
        Collection.objects.select_related("tenant")
        .filter(tenant__slug=tenant_slug, name=name)
        .first()
    )
    if collection is None or not access.access_collection_read(
        user=user, tenant=collection.tenant, collection_name=name, collection=collection
    ):
        raise DataGateError(
            ErrorCode.COLLECTION_NOT_FOUND, tenant=tenant_slug[:64], collection=name[:64]
        )
    return collection


def collection_read_filter(*, user: Any, collection: Collection) -> DocumentPredicate | None:
    """Which document ids of `collection` the user may read, decided once per request (key
    rules): None means all of them. Apply it to every id served."""
    return access.document_read_filter(
        user=user, tenant=collection.tenant, collection_name=collection.name, collection=collection
    )


def document_readable(*, user: Any, collection: Collection, doc_id: str) -> bool:
    """Whether the user may read the document `doc_id` of `collection` (stored or not)."""
    if not access.access_document_read(
        user=user,
        tenant=collection.tenant,
        collection_name=collection.name,
        doc_id=doc_id,
        collection=collection,
    ):
        return False
    allowed = collection_read_filter(user=user, collection=collection)
    return allowed is None or allowed(doc_id)
