"""Data views: named Mango selectors on a collection, managed by admins, read through by anyone
who may read the collection (docs/protocol.md, "Views").

The console, `datagate_view` and the HTTP API call these services with the acting user (or a
`System` for a command). Managing a view takes the right to administer the collection
(DG-4108); reading through one takes the right to read it, and what a view shows is always the
intersection of its selector and the reader's key rules, never more. Selectors are parsed by the
pure `replication/protocol/mango.py`; catch-up reads translate them into SQL so that a view of
1,000 documents out of 100,000 reads about 1,000 rows, not the collection.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL

from accounts import access
from accounts.access import System
from accounts.audit import audit_record
from accounts.models import SLUG_VALIDATOR, Tenant
from core.errors import DataGateError, ErrorCode
from replication.changes import Version, body_of, wire_document
from replication.doorbell import view_changed_request
from replication.models import Collection, DataView, Document
from replication.protocol import mango
from replication.protocol.conflicts import WRITE
from replication.selectors import Change, ChangePage, change_page

# Past definitions a view keeps (DataView.history): a replica synced through one of them is
# re-synced by difference; one synced through an older one gets a reset snapshot.
HISTORY_KEPT = 16


def _user_name(actor: Any) -> str:
    return f"system: {actor.purpose}" if isinstance(actor, System) else actor.get_username()


@dataclass(frozen=True)
class ViewDefinition:
    """A checked definition: the parsed selector and projected fields."""

    selector: mango.Selector
    fields: tuple[tuple[str, ...], ...]


def view_definition_check(*, name: str, selector: Any, fields: Any = None) -> ViewDefinition:
    """Check a view's name and definition (DG-4107, DG-4101..4104 naming the bad part)."""
    try:
        SLUG_VALIDATOR(name)
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValidationError("1 to 64 characters")
    except ValidationError as exc:
        detail = "the name must be a slug of 1 to 64 letters, digits, - or _"
        raise DataGateError(ErrorCode.VIEW_INVALID, view=str(name)[:64], detail=detail) from exc
    return ViewDefinition(mango.parse(selector), mango.parse_fields(fields))


def view_definition(view: DataView) -> ViewDefinition:
    return ViewDefinition(mango.parse(view.selector), mango.parse_fields(view.fields))


def view_indexes_ensure(*, definition: ViewDefinition) -> None:
    """On SQLite, an expression index per top-level equality of the view (`status`), so that a
    view's catch-up reads its documents instead of the collection's JSON (PostgreSQL answers the
    same equalities with one GIN index, migration 0010). Shared by every view and collection
    with that field; created once (IF NOT EXISTS)."""
    if connection.vendor != "sqlite":
        return
    table = Document._meta.db_table
    with connection.cursor() as cursor:
        for path, _ in mango.equalities(definition.selector.root):
            cursor.execute(mango.sqlite_index_sql(table, path))


def _check_admin(*, actor: Any, collection: Collection) -> None:
    if isinstance(actor, System):
        return
    if not access.access_collection_admin(
        user=actor, tenant=collection.tenant, collection_name=collection.name, collection=collection
    ):
        raise DataGateError(
            ErrorCode.VIEW_ADMIN_DENIED, user=_user_name(actor), collection=str(collection)
        )


def _collection(*, actor: Any, tenant: Tenant, collection_name: str) -> Collection:
    found = (
        Collection.objects.select_related("tenant")
        .filter(tenant=tenant, name=collection_name)
        .first()
    )
    if found is None or not (
        isinstance(actor, System)
        or access.access_collection_read(
            user=actor, tenant=tenant, collection_name=collection_name, collection=found
        )
    ):
        raise DataGateError(
            ErrorCode.COLLECTION_NOT_FOUND, tenant=tenant.slug, collection=collection_name
        )
    return found


def views_list(*, actor: Any, tenant: Tenant, collection_name: str) -> list[DataView]:
    collection = _collection(actor=actor, tenant=tenant, collection_name=collection_name)
    return list(DataView.objects.filter(collection=collection).select_related("collection"))


def view_get(*, actor: Any, tenant: Tenant, collection_name: str, name: str) -> DataView:
    """The view, if the actor may read its collection (DG-4105 otherwise, as for a missing one)."""
    collection = _collection(actor=actor, tenant=tenant, collection_name=collection_name)
    found = DataView.objects.filter(collection=collection, name=name).first()
    if found is None:
        raise DataGateError(
            ErrorCode.VIEW_NOT_FOUND, tenant=tenant.slug, collection=collection_name, view=name
        )
    found.collection = collection
    return found


def _as_dict(view: DataView) -> dict[str, Any]:
    return {"selector": view.selector, "fields": view.fields, "version": view.version}


def view_create(
    *,
    actor: Any,
    tenant: Tenant,
    collection_name: str,
    name: str,
    selector: Any,
    fields: Any = None,
    description: str = "",
) -> DataView:
    """A new view (DG-4106 if the name is taken, DG-4108 without the right to)."""
    collection = _collection(actor=actor, tenant=tenant, collection_name=collection_name)
    _check_admin(actor=actor, collection=collection)
    definition = view_definition_check(name=name, selector=selector, fields=fields)
    view = DataView(
        collection=collection,
        name=name,
        selector=selector,
        fields=list(fields or []),
        description=str(description or "")[:300],
    )
    try:
        with transaction.atomic():
            view.save()
            audit_record(
                actor=actor,
                action="view.create",
                target=str(view),
                tenant=tenant,
                detail=_as_dict(view),
            )
    except IntegrityError as exc:
        raise DataGateError(
            ErrorCode.VIEW_EXISTS, tenant=tenant.slug, collection=collection_name, view=name
        ) from exc
    view_indexes_ensure(definition=definition)
    return view


def view_update(
    *,
    actor: Any,
    view: DataView,
    selector: Any,
    fields: Any = None,
    description: str | None = None,
) -> DataView:
    """Change a view's definition; its version moves on when the definition changes."""
    _check_admin(actor=actor, collection=view.collection)
    definition = view_definition_check(name=view.name, selector=selector, fields=fields)
    before = _as_dict(view)
    changed = view.selector != selector or view.fields != list(fields or [])
    view.selector = selector
    view.fields = list(fields or [])
    if description is not None:
        view.description = str(description)[:300]
    if changed:
        past = {"version": view.version, "selector": before["selector"], "fields": before["fields"]}
        view.history = [*list(view.history or []), past][-HISTORY_KEPT:]
        view.version += 1
    with transaction.atomic():
        view.save()
        if changed:
            pk = view.pk
            transaction.on_commit(lambda: view_changed_request(view_pk=pk))
        audit_record(
            actor=actor,
            action="view.change",
            target=str(view),
            tenant=view.collection.tenant,
            detail={"before": before, "after": _as_dict(view)},
        )
    view_indexes_ensure(definition=definition)
    return view


def view_delete(*, actor: Any, view: DataView) -> None:
    _check_admin(actor=actor, collection=view.collection)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="view.delete",
            target=str(view),
            tenant=view.collection.tenant,
            detail=_as_dict(view),
        )
        pk = view.pk
        view.delete()
        transaction.on_commit(lambda: view_changed_request(view_pk=pk))


# --- reading through a view ----------------------------------------------------------------


def view_bindings(*, user: Any, tenant: Tenant) -> dict[str, str]:
    """The values a view's parameters take for this user's sessions and requests."""
    return {"username": user.get_username(), "tenant": tenant.slug}


def selector_bound(*, view: DataView, user: Any, tenant: Tenant) -> mango.Selector:
    """The view's selector with its parameters bound for `user`."""
    return view_definition(view).selector.bind(view_bindings(user=user, tenant=tenant))


def binding_key(*, view: DataView, selector: mango.Selector, user: Any, tenant: Tenant) -> tuple:
    """Sessions with equal keys see the same documents through the view (before key rules):
    the live hub evaluates each change once per key."""
    parsed = view_definition(view).selector
    values = view_bindings(user=user, tenant=tenant)
    return (view.pk, view.version, tuple(sorted((n, values[n]) for n in parsed.parameters)))


def _quoted_column(name: str) -> str:
    quote = connection.ops.quote_name
    return f"{quote(Document._meta.db_table)}.{quote(name)}"


def _body_column() -> str:
    return _quoted_column("body")


def documents_matching(
    queryset: QuerySet[Document], *, selector: mango.Selector
) -> QuerySet[Document]:
    """`queryset` narrowed to the documents the (bound) selector matches, in SQL."""
    sql = mango.to_sql(selector, vendor=connection.vendor, column=_body_column())
    # Every value and field name of the selector is a query parameter; the text holds only
    # the quoted column and SQL keywords (mango.to_sql).
    condition = RawSQL(sql.text, sql.params, output_field=BooleanField())  # noqa: S611
    return queryset.filter(condition)


def view_documents_page(
    *, actor: Any, view: DataView, after: str | None, limit: int
) -> tuple[list[Document], bool]:
    """Documents of the view the actor may read, by id after `after`, at most `limit`
    (projected to the view's fields); and whether more may follow."""
    collection = view.collection
    tenant = collection.tenant
    selector = selector_bound(view=view, user=actor, tenant=tenant)
    allowed = access.document_read_filter(
        user=actor, tenant=tenant, collection_name=collection.name, collection=collection
    )
    queryset = Document.objects.filter(collection_id=collection.pk)
    if after is not None:
        queryset = queryset.filter(doc_id__gt=after)
    page = list(documents_matching(queryset, selector=selector).order_by("doc_id")[:limit])
    fields = view_definition(view).fields
    documents = []
    for doc in page:
        if allowed is not None and not allowed(doc.doc_id):
            continue
        if fields:
            doc.body = mango.project(doc.body, fields)
        documents.append(doc)
    return documents, len(page) == limit


# --- replication through a view (docs/protocol.md section 12) -------------------------------


@dataclass(frozen=True)
class ViewSession:
    """What a replication session on a view needs, decided at Connect.

    `key` is the same for every session that sees the same documents through the view (before
    key rules): the live hub classifies each change once per key. `epoch` stands for the
    collection's epoch in the session's markers: it moves when the view's definition changes.
    `previous` maps the epochs of the view's kept past definitions to their selectors (bound
    like `selector`): a replica whose markers carry one of them is re-synced by difference
    (`view_difference_page`); any other epoch gets a reset snapshot of the definition.
    """

    name: str
    selector: mango.Selector
    key: tuple[Any, ...]
    epoch: int
    view_pk: int = 0
    previous: dict[int, mango.Selector] = field(default_factory=dict, hash=False, compare=False)


def view_epoch_of(*, collection_epoch: int, view_pk: int, version: int) -> int:
    digest = zlib.crc32(f"{collection_epoch}:{view_pk}:{version}".encode())
    return 1 + digest % (2**31 - 2)


def view_epoch(*, collection_epoch: int, view: DataView) -> int:
    return view_epoch_of(collection_epoch=collection_epoch, view_pk=view.pk, version=view.version)


def view_session_open(*, user: Any, tenant: Tenant, collection_id: int, name: str) -> ViewSession:
    """The view a session syncs (DG-4105 if the collection has none of that name)."""
    view = (
        DataView.objects.select_related("collection", "collection__tenant")
        .filter(collection_id=collection_id, name=name)
        .first()
    )
    if view is None:
        collection = Collection.objects.get(pk=collection_id)
        raise DataGateError(
            ErrorCode.VIEW_NOT_FOUND, tenant=tenant.slug, collection=collection.name, view=name
        )
    selector = selector_bound(view=view, user=user, tenant=tenant)
    bindings = view_bindings(user=user, tenant=tenant)
    previous = {}
    for past in view.history or []:
        try:
            old = mango.parse(past["selector"]).bind(bindings)
        except (DataGateError, KeyError, TypeError):
            continue  # a definition no longer valid: its replicas take the reset snapshot
        epoch = view_epoch_of(
            collection_epoch=view.collection.epoch, view_pk=view.pk, version=past["version"]
        )
        previous[epoch] = old
    return ViewSession(
        name=view.name,
        selector=selector,
        key=binding_key(view=view, selector=selector, user=user, tenant=tenant),
        epoch=view_epoch(collection_epoch=view.collection.epoch, view=view),
        view_pk=view.pk,
        previous=previous,
    )


def view_feed(
    changes: Iterable[Change], *, selector: mango.Selector, read_filter: Any = None
) -> dict[str, Any]:
    """The wire feed of `changes` through a view: documents in it; deletes, and documents a
    change took out of it, as tombstones at their own time (the removals of access changes,
    replication/services/sessions.py). The server does not know what a replica holds, so a
    document outside the view that changed is sent as a removal whether or not it was there."""
    change_set = []
    tombstones: dict[str, int] = {}
    for change in changes:
        if read_filter is not None and not read_filter(change.doc_id):
            continue
        version = change.version
        if change.deleted or not selector.matches(body_of(version) or {}):
            tombstones[change.doc_id] = version.modified
        else:
            change_set.append(wire_document(version))
    return {"changeSet": change_set, "tombstoneMap": tombstones}


def view_change_page(
    *,
    collection_id: int,
    selector: mango.Selector,
    after_seq: int,
    limit: int,
    up_to_seq: int | None = None,
    fresh: bool,
) -> ChangePage:
    """The next page of a pull through a view. A `fresh` pull (from zero markers or a reset
    snapshot, nothing pushed this session) has nothing to remove: it reads only the documents
    in the view, through SQL. Otherwise every change after `after_seq` (what moved out must
    leave the replica)."""
    if not fresh:
        return change_page(
            collection_id=collection_id, after_seq=after_seq, limit=limit, up_to_seq=up_to_seq
        )
    last_seq, epoch = (
        Collection.objects.filter(pk=collection_id).values_list("last_seq", "epoch").get()
    )
    bound = last_seq if up_to_seq is None else min(up_to_seq, last_seq)
    if bound <= after_seq:
        return ChangePage([], after_seq, int(last_seq), int(epoch))
    rows = Document.objects.filter(collection_id=collection_id)
    if connection.vendor == "sqlite" and mango.equalities(selector.root):
        # `+seq` keeps SQLite's planner off the (collection, seq) index, which it prefers for
        # ORDER BY ... LIMIT: the view's expression index finds the rows, a sort orders them
        # (50 ms -> 8 ms for 1,000 of 100,000 on this machine).
        seq = f"+{_quoted_column('seq')}"
        # The text is a quoted column name; the values are parameters.
        window = RawSQL(f"{seq} > %s AND {seq} <= %s", (after_seq, bound), BooleanField())  # noqa: S611
        rows = rows.filter(window).order_by(RawSQL(seq, ()).asc())  # noqa: S611
    else:
        rows = rows.filter(seq__gt=after_seq, seq__lte=bound).order_by("seq")
    docs = list(documents_matching(rows, selector=selector)[:limit])
    changes = [
        Change(d.seq, Version(d.doc_id, WRITE, d.modified, d.revision, d.origin, d.body))
        for d in docs
    ]
    covered = changes[-1].seq if len(changes) >= limit else bound
    return ChangePage(changes, covered, int(last_seq), int(epoch))


def _matching(selector: mango.Selector) -> RawSQL:
    sql = mango.to_sql(selector, vendor=connection.vendor, column=_body_column())
    # Every value and field name is a query parameter (see `documents_matching`).
    return RawSQL(sql.text, sql.params, output_field=BooleanField())  # noqa: S611


def view_difference_page(
    *,
    collection_id: int,
    old: mango.Selector,
    new: mango.Selector,
    up_to_seq: int,
    after_id: str,
    limit: int,
) -> tuple[list[Change], str, bool]:
    """A page of what a replica synced through the `old` definition of a view up to
    `up_to_seq` lacks or must drop under the `new` one (docs/protocol.md section 12.1): the
    documents with seq <= `up_to_seq` that one definition selects and the other does not,
    by id after `after_id`. Returns them as changes (`view_feed` with `new` sends those it
    selects as documents, the others as removals at their own `_modified`), the last id read
    and whether another page may follow. Documents changed after `up_to_seq` are not here:
    the pull reads them through `new` anyway. Deletes are not either: the replica saw them.

    SQL finds the documents either definition selects; the classification is Python's (the
    same `matches` the live feeds use: tests/replication/test_mango.py checks that both agree)."""
    rows = Document.objects.filter(
        collection_id=collection_id, seq__lte=up_to_seq, doc_id__gt=after_id
    )
    rows = rows.filter(Q(_matching(old)) | Q(_matching(new))).order_by("doc_id")
    page = list(rows.values_list("doc_id", "seq", "modified", "revision", "origin", "body")[:limit])
    changes = [
        Change(seq, Version(doc_id, WRITE, modified, revision, origin, body))
        for doc_id, seq, modified, revision, origin, body in page
        if old.matches(body or {}) != new.matches(body or {})
    ]
    last_id = page[-1][0] if page else after_id
    return changes, last_id, len(page) == limit
