"""Reads for GraphQL: what the acting user may see, through the same reads for an acting user
as the HTTP API (`replication.selectors`: the collection and its read filter) and the views of
the websocket pull (`replication.data_views`). No access decision is made here.

Synchronous: resolvers run each with one `database_sync_to_async` call. A document the user's
key rules hide is left out exactly as from a pull; a view is always the intersection of its
selector and the user's key rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core.errors import DataGateError, ErrorCode
from replication import data_views
from replication.changes import Version
from replication.models import Collection, Document
from replication.protocol import mango
from replication.protocol.conflicts import DELETE, WRITE
from replication.protocol.markers import Markers, PullStart, pull_start
from replication.selectors import (
    Change,
    change_page,
    collection_for_reader,
    collection_position,
    collection_read_filter,
)

ReadFilter = Callable[[str], bool] | None


@dataclass(frozen=True)
class Scope:
    """A collection, or a view of it, as one user reads it: decided once per request or
    subscription."""

    collection: Collection
    read_filter: ReadFilter
    # The bound selector of the view or of the query (None: the whole collection).
    selector: mango.Selector | None
    fields: tuple[tuple[str, ...], ...]
    # The markers' epoch: the collection's, or the view's (it moves when the view changes).
    epoch: int

    def visible(self, change: Change) -> Change | None:
        """The change as this reader sees it: None if key rules hide it; a removal if it is
        outside the view; projected to the view's fields."""
        if self.read_filter is not None and not self.read_filter(change.doc_id):
            return None
        version = change.version
        if change.deleted or self.selector is None:
            return change
        if not self.selector.matches(version.body or {}):
            removal = Version(version.doc_id, DELETE, version.modified, version.revision, "", None)
            return Change(change.seq, removal)
        if self.fields:
            body = mango.project(version.body or {}, self.fields)
            version = Version(
                version.doc_id, WRITE, version.modified, version.revision, version.origin, body
            )
            return Change(change.seq, version)
        return change


def reading_scope(
    *, user: Any, tenant: str, collection: str, view: str | None = None, selector: Any = None
) -> Scope:
    """What `user` reads of the collection (DG-3001 if nothing), through `view` (DG-4105) or an
    ad-hoc Mango `selector` (DG-4101..4104 naming the bad part), not both."""
    if view is not None and selector is not None:
        raise DataGateError(
            ErrorCode.BAD_PARAMETER, name="selector", detail="give a view or a selector, not both"
        )
    found = collection_for_reader(user=user, tenant_slug=tenant, name=collection)
    read_filter = collection_read_filter(user=user, collection=found)
    if view is not None:
        data_view = data_views.view_get(
            actor=user, tenant=found.tenant, collection_name=found.name, name=view
        )
        return Scope(
            found,
            read_filter,
            data_views.selector_bound(view=data_view, user=user, tenant=found.tenant),
            data_views.view_definition(data_view).fields,
            data_views.view_epoch(collection_epoch=found.epoch, view=data_view),
        )
    bound = None
    if selector is not None:
        bound = mango.parse(selector).bind(data_views.view_bindings(user=user, tenant=found.tenant))
    return Scope(found, read_filter, bound, (), found.epoch)


def document_get(*, user: Any, tenant: str, collection: str, doc_id: str) -> Change | None:
    """The live document, or None if it is missing or hidden from `user` (alike)."""
    scope = reading_scope(user=user, tenant=tenant, collection=collection)
    if len(doc_id) > 128 or "\x00" in doc_id:
        return None
    doc = Document.objects.filter(collection_id=scope.collection.pk, doc_id=doc_id).first()
    if doc is None or (scope.read_filter is not None and not scope.read_filter(doc_id)):
        return None
    return document_change(doc)


def document_change(doc: Document) -> Change:
    return Change(
        doc.seq, Version(doc.doc_id, WRITE, doc.modified, doc.revision, doc.origin, doc.body)
    )


def documents_after(*, scope: Scope, after_seq: int, limit: int) -> tuple[list[Change], int, bool]:
    """Live documents of the scope with seq > after_seq in seq order, at most `limit` read:
    (those the reader may see, the cursor to continue from, whether more may follow). The
    selector runs in SQL (`data_views.documents_matching`), so a narrow view reads few rows."""
    rows = Document.objects.filter(collection_id=scope.collection.pk, seq__gt=after_seq)
    if scope.selector is not None:
        rows = data_views.documents_matching(rows, selector=scope.selector)
    page = list(rows.order_by("seq")[:limit])
    seen = []
    for doc in page:
        visible = scope.visible(document_change(doc))
        if visible is not None:
            seen.append(visible)
    cursor = page[-1].seq if page else after_seq
    return seen, cursor, len(page) == limit


@dataclass(frozen=True)
class ChangesAnswer:
    changes: list[Change]
    reset: bool
    start: Markers
    end: Markers
    has_more: bool


def changes_after(*, scope: Scope, client: Markers, limit: int, snapshot: bool) -> ChangesAnswer:
    """The pull of the websocket protocol and of `GET .../changes/`, for GraphQL: changes after
    the client's markers (a reset snapshot when they are behind the purge horizon or from another
    epoch), through the scope's view and key rules."""
    coll = scope.collection
    chunk = int(settings.DATAGATE["CHUNK_SIZE"])
    limit = max(1, min(limit, chunk))
    last_seq, purge_seq = collection_position(collection_id=coll.pk)
    start = pull_start(client=client, last_seq=last_seq, purge_seq=purge_seq, epoch=scope.epoch)
    reset = False
    after_seq = client.seq
    continuing = snapshot
    if snapshot and client.epoch == scope.epoch and client.seq <= last_seq:
        start = PullStart.FROM_MARKER
    elif start is not PullStart.FROM_MARKER:
        reset, after_seq, continuing = True, 0, True
    elif client.is_zero:
        continuing = True
    if scope.selector is not None:
        page = data_views.view_change_page(
            collection_id=coll.pk,
            selector=scope.selector,
            after_seq=after_seq,
            limit=limit,
            up_to_seq=last_seq,
            fresh=continuing,
        )
    else:
        page = change_page(
            collection_id=coll.pk, after_seq=after_seq, limit=limit, up_to_seq=last_seq
        )
    changes = [v for v in (scope.visible(c) for c in page.changes) if v is not None]
    return ChangesAnswer(
        changes,
        reset,
        Markers(after_seq, scope.epoch),
        Markers(page.covered, scope.epoch),
        page.covered < last_seq,
    )


def changes_between(*, scope: Scope, after_seq: int, up_to_seq: int) -> list[Change]:
    """Every change of the collection in (after_seq, up_to_seq], as the scope's reader sees
    it: a live subscription fills a gap the hub's blocks do not cover with it."""
    found: list[Change] = []
    limit = int(settings.DATAGATE["CHUNK_SIZE"])
    while after_seq < up_to_seq:
        page = change_page(
            collection_id=scope.collection.pk,
            after_seq=after_seq,
            limit=limit,
            up_to_seq=up_to_seq,
        )
        found.extend(v for v in (scope.visible(c) for c in page.changes) if v is not None)
        if page.covered <= after_seq:
            break
        after_seq = page.covered
    return found


def live_start(*, scope: Scope) -> int:
    return collection_position(collection_id=scope.collection.pk)[0]
