"""The CouchDB door's database work: thin over the store's services, decisions in `revs`.

Every document that enters goes through the write engine (`replication.services.engine`): the
same validation (`parse_feed`), the same per-change access decision (the user through the
request's token, `accounts.access.Bearer`: the token's `write` scope, then
`accounts.access.document_policy`), the same seqs, journal, search index and doorbell as a
websocket replica's push. What this module adds is the CouchDB revision bookkeeping
(`RevisionHistory`, couchdb/revs.py) and the `_local` checkpoints.

Plain synchronous functions with keyword-only arguments; the ASGI shell (couchdb/asgi.py)
calls each in one `database_sync_to_async` step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from json.encoder import encode_basestring
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from oauth2_provider.models import get_access_token_model

from accounts import access
from accounts.access_changes import access_version, access_versions, session_scopes
from accounts.models import Tenant
from accounts.tokens import TokenRejected, token_authenticate, token_user
from core.errors import DataGateError, ErrorCode
from couchdb import cache, revs
from couchdb.models import LocalDocument, RevisionHistory
from couchdb.revs import BadRevision, History, StoredVersion
from replication import data_views
from replication.changes import splice_fields
from replication.models import Collection, Document, Tombstone
from replication.protocol import mango
from replication.protocol.conflicts import DELETE, WRITE, incoming_wins, version_key
from replication.protocol.markers import Markers, PullStart, pull_start
from replication.rows import collection_row, json_value, rows_by_ids
from replication.selectors import change_page
from replication.services.engine import (
    batch_apply,
    collection_get_or_create,
    now_ms,
)

# CouchDB reports its version; PouchDB reads nothing of it but the shape.
COUCHDB_VERSION = "3.3.3"
ORIGIN_PREFIX = "couchdb:"


class CouchError(Exception):
    """An answer in CouchDB's error shape: `{"error": ..., "reason": ...}` with a status.

    `reason` starts with a DataGate code (docs/errors.md) whenever DataGate refused something.
    """

    def __init__(self, status: int, error: str, reason: str) -> None:
        self.status = status
        self.error = error
        self.reason = reason
        super().__init__(f"{status} {error}: {reason}")

    @classmethod
    def from_datagate(cls, problem: DataGateError) -> CouchError:
        status = problem.error.http_status
        error = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(status, "bad_request")
        return cls(status, error, problem.text)


def _refusal(code: ErrorCode, **params: Any) -> CouchError:
    return CouchError.from_datagate(DataGateError(code, **params))


# --- who is asking, and what they may do ---------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """The acting user of one request, from its OAuth2 bearer token."""

    user: Any
    scopes: frozenset[str]
    token_id: int
    expires: datetime | None = None


def actor_authenticate(*, raw_token: str | None) -> Actor:
    """The request's user, or 401 (no, bad, expired or revoked token: DG-1001)."""
    try:
        token = token_authenticate(raw_token)
    except TokenRejected as rejected:
        raise _refusal(ErrorCode.TOKEN_INVALID, reason=rejected.reason) from None
    return Actor(
        user=token.user, scopes=token.scopes, token_id=token.token_id, expires=token.expires
    )


def grant_open(*, raw_token: str | None, tenant_slug: str, name: str) -> DatabaseGrant:
    """`actor_authenticate` then `database_open`, in one database step."""
    actor = actor_authenticate(raw_token=raw_token)
    return database_open(actor=actor, tenant_slug=tenant_slug, name=name)


def actor_still_valid(*, actor: Actor) -> bool:
    """Whether the actor's token still authenticates (live feeds re-check it)."""

    token = (
        get_access_token_model()
        .objects.select_related("user", "application__user")
        .filter(pk=actor.token_id)
        .first()
    )
    if token is None or token.expires <= timezone.now():
        return False
    user = token_user(token)
    return user is not None and bool(user.is_active)


@dataclass(frozen=True)
class DatabaseGrant:
    """One collection as a CouchDB database, for one actor: decided once per request.

    `baseline` is the access marker's counter read before the decision
    (accounts/access_changes.py): a live feed re-checks against it.
    """

    actor: Actor
    tenant: Tenant
    name: str
    collection_id: int
    policy: access.DocumentPolicy
    baseline: int = 0

    @property
    def origin(self) -> str:
        return f"{ORIGIN_PREFIX}{self.actor.user.get_username()}"[:128]

    def may_read(self, doc_id: str) -> bool:
        return self.policy.may_read(doc_id)


def _tenant(slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def database_open(*, actor: Actor, tenant_slug: str, name: str) -> DatabaseGrant:
    """The collection `name` for a reader: 404 when it does not exist or may not be read (alike,
    as DG-3001 on the websocket), 403 without the `read` scope."""
    if not access.access_scope(scopes=actor.scopes, scope="read"):
        raise _refusal(ErrorCode.TOKEN_SCOPE, scope="read")
    baseline = access_version()
    not_found = CouchError(
        404,
        "not_found",
        DataGateError(ErrorCode.COLLECTION_NOT_FOUND, tenant=tenant_slug, collection=name).text,
    )
    tenant = _tenant(tenant_slug)
    if tenant is None:
        raise not_found
    collection = Collection.objects.filter(tenant=tenant, name=name).first()
    if collection is None or not access.access_collection_read(
        user=actor.user, tenant=tenant, collection_name=name, collection=collection
    ):
        raise not_found
    policy = access.document_policy(
        user=actor.user, tenant=tenant, collection_name=name, collection=collection
    )
    return DatabaseGrant(actor, tenant, name, collection.pk, policy, baseline)


def feed_still_allowed(*, grant: DatabaseGrant) -> str:
    """Why a live feed must end now ("" while it may go on): its token was revoked or
    expired, or an input of its access decision changed (roles, grants, key rules). Two
    queries; the feed's next request gets a fresh decision."""
    if not actor_still_valid(actor=grant.actor):
        return "token revoked or expired"
    scopes = session_scopes(
        user_id=grant.actor.user.pk, tenant_id=grant.tenant.pk, collection_name=grant.name
    )
    if access_versions(scopes=scopes, after=grant.baseline):
        return "access changed"
    return ""


def database_create(*, actor: Actor, tenant_slug: str, name: str) -> bool:
    """`PUT /{db}/`: create the collection where the actor may (True), 412 if it exists."""
    tenant = _tenant(tenant_slug)
    if tenant is not None:
        existing = Collection.objects.filter(tenant=tenant, name=name).first()
        if existing is not None and access.access_collection_read(
            user=actor.user, tenant=tenant, collection_name=name, collection=existing
        ):
            raise CouchError(412, "file_exists", "The database could not be created, it exists.")
    may_create = (
        tenant is not None
        and access.access_scope(scopes=actor.scopes, scope="write")
        and access.access_collection_create(user=actor.user, tenant=tenant)
    )
    if not may_create or tenant is None:
        raise _refusal(ErrorCode.READ_ONLY, user=actor.user.get_username())
    try:
        _, created = collection_get_or_create(tenant=tenant, name=name)
    except ValidationError:
        raise _refusal(ErrorCode.BAD_PARAMETER, name="db", detail="not a valid name") from None
    if not created:
        raise CouchError(412, "file_exists", "The database could not be created, it exists.")
    return True


def server_uuid(*, tenant_slug: str) -> str:
    """A stable uuid per tenant (PouchDB puts it into its replication ids)."""
    key = settings.SECRET_KEY.encode()
    return hashlib.sha256(key + b"\x1fcouchdb-uuid\x1f" + tenant_slug.encode()).hexdigest()[:32]


def database_info(*, grant: DatabaseGrant) -> dict[str, Any]:
    collection = Collection.objects.get(pk=grant.collection_id)
    docs = Document.objects.filter(collection_id=grant.collection_id).count()
    deleted = Tombstone.objects.filter(collection_id=grant.collection_id).count()
    return {
        "db_name": grant.name,
        "doc_count": docs,
        "doc_del_count": deleted,
        "update_seq": seq_encode(collection.last_seq, collection.epoch),
        "purge_seq": 0,
        "compact_running": False,
        "disk_format_version": 8,
        "instance_start_time": "0",
        "sizes": {"active": 0, "external": 0, "file": 0},
        "props": {},
    }


# --- sequences: DataGate's own gap-free seqs, opaque strings to clients ----------------------


def seq_encode(seq: int, epoch: int) -> str:
    """`"<seq>-<epoch>"`: the epoch lets a restored server tell a stale checkpoint."""
    return f"{seq}-{epoch}"


def seq_decode(raw: object) -> Markers:
    """A `since` from a client: 0, `"<seq>-<epoch>"` or a bare seq; 400 otherwise."""
    if raw is None or raw in (0, "0", ""):
        return Markers()
    text = str(raw)
    seq_text, _, epoch_text = text.partition("-")
    if not seq_text.isdigit() or (epoch_text and not epoch_text.isdigit()) or len(text) > 40:
        raise _refusal(ErrorCode.BAD_PARAMETER, name="since", detail="not a sequence")
    return Markers(int(seq_text), int(epoch_text or 0))


def since_resolve(*, grant: DatabaseGrant, raw: object) -> int:
    """The seq a feed starts after; DG-9001 when the client must start over."""
    last_seq, purge_seq, epoch = collection_row(
        grant.collection_id, ("last_seq", "purge_seq", "epoch")
    )
    if raw == "now":
        return int(last_seq)
    markers = seq_decode(raw)
    start = pull_start(client=markers, last_seq=last_seq, purge_seq=purge_seq, epoch=epoch)
    if start is not PullStart.FROM_MARKER:
        raise _refusal(ErrorCode.COUCHDB_START_OVER, since=str(raw)[:40], reason=start.value)
    return markers.seq


# --- revision histories ------------------------------------------------------------------


def _stored_versions(
    collection_id: int, ids: Sequence[str], *, bodies: bool = False
) -> tuple[dict[str, StoredVersion], dict[str, dict[str, Any]]]:
    stored: dict[str, StoredVersion] = {}
    found_bodies: dict[str, dict[str, Any]] = {}
    if not ids:
        return stored, found_bodies
    doc_fields = ["doc_id", "revision", "modified", "origin", "seq", *(["body"] if bodies else [])]
    for row in rows_by_ids(Document, doc_fields, collection_id, ids):
        stored[row[0]] = StoredVersion(row[0], False, row[1], row[2], row[3], row[4])
        if bodies:
            found_bodies[row[0]] = json_value(row[5])
    tomb_fields = ["doc_id", "revision", "deleted_at", "origin", "seq"]
    for doc_id, revision, deleted_at, origin, seq in rows_by_ids(
        Tombstone, tomb_fields, collection_id, ids
    ):
        stored[doc_id] = StoredVersion(doc_id, True, revision, deleted_at, origin, seq)
    return stored, found_bodies


def _histories(collection_id: int, ids: Sequence[str]) -> dict[str, History]:
    found: dict[str, History] = {}
    if not ids:
        return found
    fields = ["doc_id", "seq", "revs", "closed"]
    for doc_id, seq, path, closed in rows_by_ids(RevisionHistory, fields, collection_id, ids):
        found[doc_id] = History(seq, list(json_value(path)), [list(b) for b in json_value(closed)])
    return found


def _histories_save(collection_id: int, views: Mapping[str, History]) -> None:
    """Upsert histories, never replacing one that describes a newer version (a reader that
    materialised an older view must not undo a writer's)."""
    if not views:
        return
    quote = connection.ops.quote_name
    table = quote(RevisionHistory._meta.db_table)
    adapt = connection.ops.adapt_json_value
    columns = ("collection_id", "doc_id", "seq", "revs", "closed")
    marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
    rows = [
        (collection_id, doc_id, view.seq, adapt(view.path, None), adapt(view.closed, None))
        for doc_id, view in views.items()
    ]
    per_statement = 150
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            batch = rows[start : start + per_statement]
            # Only quoted names of our own table and columns go into the text.
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
                f"VALUES {', '.join([marks] * len(batch))} "
                f"ON CONFLICT ({quote('collection_id')}, {quote('doc_id')}) DO UPDATE SET "
                f"{quote('seq')} = EXCLUDED.{quote('seq')}, "
                f"{quote('revs')} = EXCLUDED.{quote('revs')}, "
                f"{quote('closed')} = EXCLUDED.{quote('closed')} "
                f"WHERE {table}.{quote('seq')} <= EXCLUDED.{quote('seq')}",
                [value for row in batch for value in row],
            )


def views_read(
    *,
    collection_id: int,
    ids: Sequence[str],
    stored: Mapping[str, StoredVersion] | None = None,
) -> dict[str, History]:
    """The current CouchDB view of each id (absent: never existed), recording the views of
    versions other doors wrote, so that every later reader derives the same revision ids."""
    ids = list(dict.fromkeys(ids))
    if stored is None:
        stored, _ = _stored_versions(collection_id, ids)
    histories = _histories(collection_id, ids)
    views: dict[str, History] = {}
    fresh: dict[str, History] = {}
    for doc_id in ids:
        held = histories.get(doc_id)
        view = revs.current_view(stored.get(doc_id), held)
        if view is None:
            continue
        views[doc_id] = view
        held_version = stored.get(doc_id)
        if held_version is not None:
            cache.views.put((collection_id, doc_id, view.seq, held_version.stamp), view)
        if held is None or held.seq != view.seq:
            fresh[doc_id] = view
    if fresh:
        _histories_save(collection_id, fresh)
    return views


# --- writes: _bulk_docs, PUT and DELETE of one document ---------------------------------------


@dataclass
class _Pending:
    """One id's outcome so far while a request's documents are decided in order."""

    view: History | None
    stamp: int  # the stored (or decided) version's time
    deleted: bool
    body: dict[str, Any] | None
    revision: int
    origin: str = ""
    changed: bool = False


def _doc_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The user's fields of a CouchDB document. `_attachments` are refused (docs/couchdb.md);
    other `_` fields are left in, for the store's one validation to refuse (DG-4005)."""
    if doc.get("_attachments"):
        raise _refusal(ErrorCode.COUCHDB_ATTACHMENTS, doc_id=str(doc.get("_id"))[:60])
    return {
        name: value
        for name, value in doc.items()
        if name not in ("_id", "_rev", "_revisions", "_deleted", "_attachments", "_conflicts")
    }


def docs_apply(
    *, grant: DatabaseGrant, docs: Sequence[Any], new_edits: bool
) -> list[dict[str, Any]]:
    """`_bulk_docs` (and PUT/DELETE of one document): one result per document, in order.

    `new_edits=False` is replication: each document brings its revision and path, and a
    conflict with the stored version is decided by DataGate's rule, the loser's branch closed.
    `new_edits=True` is an app's own edit: `_rev` must be the current winner (409 otherwise),
    and the server draws the new revision id. Accepted changes are applied in one transaction
    through `batch_apply_many` (validation, access, seqs, journal, doorbell).
    """
    results: list[dict[str, Any] | None] = [None] * len(docs)
    parsed: list[tuple[int, str, Mapping[str, Any]]] = []
    for index, doc in enumerate(docs):
        doc_id = doc.get("_id") if isinstance(doc, Mapping) else None
        if not isinstance(doc, Mapping) or not isinstance(doc_id, str) or not doc_id:
            results[index] = {"error": "bad_request", "reason": "Document must have an _id."}
            continue
        if doc_id.startswith("_design/") or doc_id.startswith("_local/"):
            results[index] = _error_result(
                doc_id, _refusal(ErrorCode.COUCHDB_UNSUPPORTED, what="design documents here")
            )
            continue
        parsed.append((index, doc_id, doc))
    ids = list(dict.fromkeys(doc_id for _, doc_id, _ in parsed))
    if not ids:
        return [r or {} for r in results]
    now = now_ms()
    with transaction.atomic():
        # The collection's row lock first (batch_apply_many takes it again): nothing changes
        # these ids between reading their versions and writing.
        collection_row(grant.collection_id, ("id",), for_update=True)
        stored, bodies = _stored_versions(grant.collection_id, ids, bodies=True)
        views = views_read(collection_id=grant.collection_id, ids=ids, stored=stored)
        pending: dict[str, _Pending] = {}
        for doc_id in ids:
            held = stored.get(doc_id)
            pending[doc_id] = _Pending(
                view=views.get(doc_id),
                stamp=held.stamp if held else 0,
                deleted=held.deleted if held else True,
                body=bodies.get(doc_id),
                revision=held.revision if held else 0,
                origin=held.origin if held else "",
            )
        for index, doc_id, doc in parsed:
            try:
                body = _doc_body(doc)
                decide = _decide_replicated if not new_edits else _decide_edit
                results[index] = decide(doc_id, doc, body, pending[doc_id], now, grant)
            except BadRevision as bad:
                results[index] = {"id": doc_id, "error": "bad_request", "reason": str(bad)}
            except CouchError as refused:
                results[index] = _error_result(doc_id, refused)
        rejected = _apply(grant, pending)
        for index, doc_id, _ in parsed:
            if doc_id in rejected:
                results[index] = _error_result(doc_id, CouchError.from_datagate(rejected[doc_id]))
    return [r or {} for r in results]


def _error_result(doc_id: str, error: CouchError) -> dict[str, Any]:
    return {"id": doc_id, "error": error.error, "reason": error.reason}


def _decide_replicated(
    doc_id: str,
    doc: Mapping[str, Any],
    body: dict[str, Any],
    state: _Pending,
    now: int,
    grant: DatabaseGrant,
) -> dict[str, Any]:
    path = revs.path_from_doc(doc)
    deleted = bool(doc.get("_deleted"))
    ok = {"ok": True, "id": doc_id, "rev": path[0]}
    view = state.view
    if view is not None and view.knows(path[0]):
        return ok  # already here (or closed): nothing to do
    if view is None or view.head in path:
        # A new document, or an edit of the current winner: it wins.
        stamp = max(now, state.stamp + 1) if view is not None else now
        new_path = revs.extend(path, view.path) if view is not None else path
        closed = view.closed if view is not None else []
        _set(state, History(0, new_path, closed, deleted), stamp, deleted, body, path)
        return ok
    # A conflict: DataGate's rule decides (docs/decisions/0009), arrival time as _modified.
    incoming = version_key(
        kind=DELETE if deleted else WRITE,
        modified=now,
        revision=revs.rev_generation(path[0]),
        origin=grant.origin,
    )
    held = version_key(
        kind=DELETE if state.deleted else WRITE,
        modified=state.stamp,
        revision=state.revision,
        origin=state.origin,
    )
    if incoming_wins(incoming, held):
        closed = revs.add_closed(view.closed, revs.close_path(view.path, deleted=view.deleted))
        _set(state, History(0, path, closed, deleted), now, deleted, body, path)
    else:
        # The stored winner stays, touched (a new seq) so that every replica, the writer of
        # the losing branch included, is sent the closed branch.
        closed = revs.add_closed(view.closed, revs.close_path(path, deleted=deleted))
        stamp = max(now, state.stamp + 1)
        _set(
            state,
            History(0, view.path, closed, view.deleted),
            stamp,
            view.deleted,
            state.body,
            None,
        )
    return ok


def _decide_edit(
    doc_id: str,
    doc: Mapping[str, Any],
    body: dict[str, Any],
    state: _Pending,
    now: int,
    grant: DatabaseGrant,
) -> dict[str, Any]:
    raw_rev = doc.get("_rev")
    deleted = bool(doc.get("_deleted"))
    view = state.view
    conflict = CouchError(409, "conflict", "Document update conflict.")
    if raw_rev is None:
        if view is not None and not view.deleted:
            raise conflict
    else:
        rev = revs.parse_rev(raw_rev)
        if view is None or view.head != rev:
            if view is not None and view.deleted and rev in view.path:
                pass  # CouchDB lets an edit of a deleted document's old rev recreate it
            else:
                raise conflict
    if deleted and (view is None or view.deleted):
        raise CouchError(404, "not_found", "deleted" if view is not None else "missing")
    parent = view.head if view is not None else None
    new_rev = revs.new_edit_rev(parent, deleted=deleted, body=body)
    new_path = [new_rev, *(view.path if view is not None else [])][: revs.REVS_LIMIT]
    closed = view.closed if view is not None else []
    stamp = max(now, state.stamp + 1)
    _set(state, History(0, new_path, closed, deleted), stamp, deleted, body, new_path)
    return {"ok": True, "id": doc_id, "rev": new_rev}


def _set(
    state: _Pending,
    view: History,
    stamp: int,
    deleted: bool,
    body: dict[str, Any] | None,
    path: list[str] | None,
) -> None:
    state.view = view
    state.stamp = stamp
    state.deleted = deleted
    state.body = body if not deleted else None
    if path is not None:
        state.revision = revs.rev_generation(path[0])
    state.changed = True


def _apply(grant: DatabaseGrant, pending: Mapping[str, _Pending]) -> dict[str, DataGateError]:
    """Write the decided versions through the store's one door; record their histories."""
    change_set: list[dict[str, Any]] = []
    tombstones: dict[str, int] = {}
    for doc_id, state in pending.items():
        if not state.changed:
            continue
        if state.deleted:
            tombstones[doc_id] = state.stamp
        else:
            doc = dict(state.body or {})
            doc.update(
                {
                    "_id": doc_id,
                    "_revision": max(1, state.revision),
                    "_modified": state.stamp,
                    "_origin": grant.origin,
                }
            )
            change_set.append(doc)
    if not change_set and not tombstones:
        return {}
    result = batch_apply(
        # The user through the request's token: writes need its `write` scope (DG-1002).
        actor=access.Bearer(user=grant.actor.user, scopes=grant.actor.scopes),
        collection_id=grant.collection_id,
        feed={"changeSet": change_set, "tombstoneMap": tombstones},
        origin=grant.origin,
        policy=grant.policy,
    )
    rejected = {r.doc_id: r.error for r in result.rejected}
    written = [d for d, s in pending.items() if s.changed and d not in rejected]
    stored, _ = _stored_versions(grant.collection_id, written)
    histories: dict[str, History] = {}
    for doc_id in written:
        view, held = pending[doc_id].view, stored.get(doc_id)
        if view is not None and held is not None:
            histories[doc_id] = History(held.seq, view.path, view.closed, held.deleted)
    _histories_save(grant.collection_id, histories)
    for doc_id, history in histories.items():
        remember = partial(
            cache.remember,
            grant.collection_id,
            doc_id,
            stored[doc_id].stamp,
            history,
            pending[doc_id].body,
        )
        transaction.on_commit(remember)
    return rejected


# --- reads -----------------------------------------------------------------------------------


def doc_render(
    doc_id: str,
    view: History,
    body: Mapping[str, Any] | None,
    *,
    rev: str | None = None,
    with_revs: bool = False,
) -> dict[str, Any]:
    """A document in CouchDB's shape at its winning revision, or at the leaf `rev`."""
    path, deleted = view.path, view.deleted
    if rev is not None and rev != view.head:
        branch = view.branch_of(rev)
        assert branch is not None
        path, deleted = branch
        body = None
    doc: dict[str, Any] = {"_id": doc_id, "_rev": path[0]}
    if deleted:
        doc["_deleted"] = True
    else:
        doc.update(body or {})
    if with_revs:
        doc["_revisions"] = revs.revisions_of(path)
    return doc


@dataclass(frozen=True)
class ChangesPage:
    results: list[dict[str, Any]]
    last_seq: int
    head: int
    epoch: int


def changes_read(
    *,
    grant: DatabaseGrant,
    since: int,
    limit: int | None,
    include_docs: bool = False,
    all_docs: bool = False,
    doc_ids: frozenset[str] | None = None,
    selector: Any = None,
    prefetch: bool = False,
) -> ChangesPage:
    """Changes after `since`, in seq order, each id once at its latest change, only ids the
    actor may read (the last seq still moves past the others).

    With `prefetch` (a replicator's page: `style=all_docs` without `include_docs`), the page
    reads the listed versions' bodies in the same query and puts their leaves in the leaf
    cache (couchdb/cache.py), so that the `_bulk_get` the replicator sends next for exactly
    these revisions is answered without a database step (`docs_get_cached`)."""
    chunk = int(settings.DATAGATE["CHUNK_SIZE"])
    results: list[dict[str, Any]] = []
    position = since
    head = since
    epoch = 0
    while limit is None or len(results) < limit:
        want = chunk if limit is None else min(chunk, limit - len(results))
        page = change_page(
            collection_id=grant.collection_id,
            after_seq=position,
            limit=want,
            # A selector reads the bodies it matches; a prefetch keeps them for _bulk_get, as
            # the JSON text stored, which `_bulk_get` splices into its answer undecoded.
            bodies=include_docs or prefetch or selector is not None,
            as_text=prefetch and not include_docs and selector is None,
        )
        head, epoch = page.head, page.epoch
        changes = [
            c
            for c in page.changes
            if grant.may_read(c.doc_id)
            and (doc_ids is None or c.doc_id in doc_ids)
            and selector_passes(selector, c)
        ]
        stored = {
            c.doc_id: StoredVersion(
                c.doc_id, c.deleted, c.version.revision, c.version.modified, c.version.origin, c.seq
            )
            for c in changes
        }
        views = views_read(collection_id=grant.collection_id, ids=list(stored), stored=stored)
        for change in changes:
            view = views[change.doc_id]
            leaves = view.leaves() if all_docs else [view.head]
            row: dict[str, Any] = {
                "seq": seq_encode(change.seq, epoch),
                "id": change.doc_id,
                "changes": [{"rev": leaf} for leaf in leaves],
            }
            if view.deleted:
                row["deleted"] = True
            if include_docs:
                row["doc"] = doc_render(change.doc_id, view, change.version.body)
            elif prefetch:
                cache.remember(
                    grant.collection_id,
                    change.doc_id,
                    change.version.modified,
                    view,
                    change.version.body if change.version.text is None else change.version.text,
                )
            results.append(row)
        position = page.covered
        if page.covered >= page.head:
            break
    return ChangesPage(results, position, head, epoch)


def selector_passes(selector: Any, change: Any) -> bool:
    """`filter=_selector` and `filter=_view`: a change passes when its document matches the
    (bound) Mango selector. Deletes always pass, so a filtered replica drops what was deleted
    (CouchDB's own `_selector` loses them: a tombstone's body matches nothing)."""
    return selector is None or change.deleted or selector.matches(change.version.body or {})


def changes_selector(*, grant: DatabaseGrant, raw: Any = None, view: str | None = None) -> Any:
    """The bound selector of `filter=_selector` (`raw`) or `filter=_view` (`view`, a DataGate
    data view of the collection); DG-41xx for a bad one or a view that does not exist."""

    user = grant.actor.user
    if view is not None:
        found = data_views.view_get(
            actor=user, tenant=grant.tenant, collection_name=grant.name, name=view
        )
        return data_views.selector_bound(view=found, user=user, tenant=grant.tenant)
    bindings = data_views.view_bindings(user=user, tenant=grant.tenant)
    return mango.parse(raw).bind(bindings)


def changes_from_blocks(
    *,
    grant: DatabaseGrant,
    blocks: Sequence[Any],
    since: int,
    limit: int | None,
    include_docs: bool = False,
    all_docs: bool = False,
    doc_ids: frozenset[str] | None = None,
    selector: Any = None,
    prefetch: bool = False,
) -> ChangesPage | None:
    """The page after `since` built from the live hub's blocks (`replication.live.FeedBlock`,
    read once for every session of the process) and the view cache; None when they do not
    cover it (a gap, a cache miss, more than `limit`): the caller reads the database then.
    (`prefetch` is `changes_read`'s: the writes that made the blocks filled the leaf cache.)"""
    ordered = sorted(blocks, key=lambda b: b.start)
    if not ordered or ordered[0].start > since:
        return None
    results: list[dict[str, Any]] = []
    position = since
    epoch = ordered[-1].epoch
    for block in ordered:
        if block.end <= position:
            continue
        if block.start > position or block.epoch != epoch:
            return None
        for change in block.with_values():
            if change.seq <= position:
                continue
            if (
                not grant.may_read(change.doc_id)
                or (doc_ids is not None and change.doc_id not in doc_ids)
                or not selector_passes(selector, change)
            ):
                continue
            key = (grant.collection_id, change.doc_id, change.seq, change.version.modified)
            view = cache.views.get(key)
            if view is None:
                return None
            leaves = view.leaves() if all_docs else [view.head]
            row: dict[str, Any] = {
                "seq": seq_encode(change.seq, epoch),
                "id": change.doc_id,
                "changes": [{"rev": leaf} for leaf in leaves],
            }
            if view.deleted:
                row["deleted"] = True
            if include_docs:
                row["doc"] = doc_render(change.doc_id, view, change.version.body)
            results.append(row)
        position = block.end
    if limit is not None and len(results) > limit:
        return None
    return ChangesPage(results, position, position, epoch)


def changes_from(
    *, grant: DatabaseGrant, raw_since: object, limit: int | None, **options: Any
) -> tuple[int, ChangesPage]:
    """`since_resolve` then `changes_read`, in one database step."""
    since = since_resolve(grant=grant, raw=raw_since)
    return since, changes_read(grant=grant, since=since, limit=limit, **options)


def revs_diff(*, grant: DatabaseGrant, asked: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """`_revs_diff`: for each id, the asked revisions this server does not hold."""
    views = views_read(collection_id=grant.collection_id, ids=list(asked))
    answer: dict[str, Any] = {}
    for doc_id, wanted in asked.items():
        view = views.get(doc_id) if grant.may_read(doc_id) else None
        missing = revs.missing_revs(view, wanted)
        if missing:
            answer[doc_id] = {"missing": missing}
    return answer


def _not_found(doc_id: str, rev: str | None, reason: str = "missing") -> dict[str, Any]:
    return {
        "error": {"id": doc_id, "rev": rev or "undefined", "error": "not_found", "reason": reason}
    }


def docs_get(
    *,
    grant: DatabaseGrant,
    asked: Sequence[tuple[str, str | None]],
    with_revs: bool,
    latest: bool,
) -> list[dict[str, Any]]:
    """`_bulk_get`: each asked (id, rev) as `{"ok": doc}` or `{"error": ...}`, in order."""
    ids = list(dict.fromkeys(doc_id for doc_id, _ in asked if grant.may_read(doc_id)))
    stored, bodies = _stored_versions(grant.collection_id, ids, bodies=True)
    views = views_read(collection_id=grant.collection_id, ids=ids, stored=stored)
    answer: list[dict[str, Any]] = []
    for doc_id, rev in asked:
        view = views.get(doc_id)
        if view is None:
            answer.append({"id": doc_id, "docs": [_not_found(doc_id, rev)]})
            continue
        leaf = _leaf_for(view, rev, latest=latest)
        if leaf is None:
            answer.append({"id": doc_id, "docs": [_not_found(doc_id, rev)]})
            continue
        doc = doc_render(doc_id, view, bodies.get(doc_id), rev=leaf, with_revs=with_revs)
        answer.append({"id": doc_id, "docs": [{"ok": doc}]})
        held = stored.get(doc_id)
        if held is not None:
            cache.remember(grant.collection_id, doc_id, held.stamp, view, bodies.get(doc_id))
    return answer


@dataclass(frozen=True, slots=True)
class EncodedResult:
    """One `_bulk_get` result already encoded: its body was spliced from the stored text."""

    text: str


def _spliced_result(
    doc_id: str, rev: str, path: list[str], text: str, with_revs: bool
) -> str | None:
    fields = f'"_id":{encode_basestring(doc_id)},"_rev":{encode_basestring(rev)}'
    if with_revs:
        fields += ',"_revisions":' + json.dumps(revs.revisions_of(path), separators=(",", ":"))
    doc = splice_fields(text, fields)
    if doc is None:
        return None
    return f'{{"id":{encode_basestring(doc_id)},"docs":[{{"ok":{doc}}}]}}'


def docs_get_cached(
    *, grant: DatabaseGrant, asked: Sequence[tuple[str, str | None]], with_revs: bool
) -> list[dict[str, Any] | EncodedResult] | None:
    """`_bulk_get` from the leaf cache when every asked revision is there, else None.

    A live PouchDB asks for the leaves `_changes` just listed, which the write that made them
    (or an earlier read) put in the cache. An asked leaf is answered as it is even with
    `latest=true` when a newer one exists: revisions never change, and the replica fetches
    the newer leaf with the next change. A leaf a replicator's `_changes` page cached holds
    its body as the stored JSON text: it is spliced into the answer (`EncodedResult`), not
    decoded and encoded again, unless the splice screen (`changes.splice_fields`) says no."""
    answer: list[dict[str, Any] | EncodedResult] = []
    for doc_id, rev in asked:
        if not grant.may_read(doc_id):
            answer.append({"id": doc_id, "docs": [_not_found(doc_id, rev)]})
            continue
        if rev is None:
            return None
        found = cache.leaves.get((grant.collection_id, doc_id, rev))
        if found is None:
            return None
        path, deleted, held = found
        if isinstance(held, str) and not deleted:
            spliced = _spliced_result(doc_id, rev, path, held, with_revs)
            if spliced is not None:
                answer.append(EncodedResult(spliced))
                continue
        body = json.loads(held) if isinstance(held, str) else held
        doc: dict[str, Any] = {"_id": doc_id, "_rev": rev}
        if deleted:
            doc["_deleted"] = True
        else:
            doc.update(body or {})
        if with_revs:
            doc["_revisions"] = revs.revisions_of(path)
        answer.append({"id": doc_id, "docs": [{"ok": doc}]})
    return answer


def _leaf_for(view: History, rev: str | None, *, latest: bool) -> str | None:
    """The leaf revision to answer for `rev`: the winner for None, the leaf itself, or with
    `latest` the leaf whose branch holds an older `rev`. Bodies of old revisions are not
    kept (like a compacted CouchDB): without `latest` they are missing."""
    if rev is None:
        return view.head
    leaves = view.leaves()
    if rev in leaves:
        return rev
    if latest:
        branch = view.branch_of(rev)
        if branch is not None:
            return branch[0][0]
    return None


def doc_open(
    *, grant: DatabaseGrant, doc_id: str, rev: str | None, latest: bool
) -> tuple[History, dict[str, Any] | None, str]:
    """One document's view, body and the leaf to answer for `rev`; 404 when missing, deleted
    (without `rev`) or not readable."""
    if not grant.may_read(doc_id):
        raise CouchError(404, "not_found", "missing")
    stored, bodies = _stored_versions(grant.collection_id, [doc_id], bodies=True)
    view = views_read(collection_id=grant.collection_id, ids=[doc_id], stored=stored).get(doc_id)
    if view is None:
        raise CouchError(404, "not_found", "missing")
    leaf = _leaf_for(view, rev, latest=latest)
    if leaf is None:
        raise CouchError(404, "not_found", "missing")
    if rev is None and view.deleted:
        raise CouchError(404, "not_found", "deleted")
    return view, bodies.get(doc_id), leaf


def all_docs(
    *,
    grant: DatabaseGrant,
    keys: Sequence[str] | None,
    start: str | None,
    end: str | None,
    limit: int | None,
    skip: int,
    include_docs: bool,
    descending: bool,
) -> dict[str, Any]:
    """`_all_docs`: live documents by id (or the asked `keys`, deleted ones marked)."""
    collection_id = grant.collection_id
    total = Document.objects.filter(collection_id=collection_id).count()
    rows: list[dict[str, Any]] = []
    if keys is not None:
        stored, bodies = _stored_versions(
            collection_id, [k for k in keys if grant.may_read(k)], bodies=include_docs
        )
        views = views_read(collection_id=collection_id, ids=list(stored), stored=stored)
        for key in keys:
            view = views.get(key)
            if view is None:
                rows.append({"key": key, "error": "not_found"})
                continue
            value: dict[str, Any] = {"rev": view.head}
            row: dict[str, Any] = {"id": key, "key": key, "value": value}
            if view.deleted:
                value["deleted"] = True
                if include_docs:
                    row["doc"] = None
            elif include_docs:
                row["doc"] = doc_render(key, view, bodies.get(key))
            rows.append(row)
        return {"total_rows": total, "offset": skip, "rows": rows[skip:][: limit or None]}
    query = Document.objects.filter(collection_id=collection_id)
    if start is not None:
        query = query.filter(doc_id__lte=start) if descending else query.filter(doc_id__gte=start)
    if end is not None:
        query = query.filter(doc_id__gte=end) if descending else query.filter(doc_id__lte=end)
    query = query.order_by("-doc_id" if descending else "doc_id")
    fields = ["doc_id", "revision", "modified", "origin", "seq", "body"]
    found: list[tuple[StoredVersion, dict[str, Any]]] = []
    offset = 0
    # Pages until enough readable rows are found: key rules may hide some ids.
    while limit is None or len(found) < skip + limit:
        page = list(query.values_list(*fields)[offset : offset + 1000])
        if not page:
            break
        offset += len(page)
        for doc_id, revision, modified, origin, seq, body in page:
            if grant.may_read(doc_id):
                found.append((StoredVersion(doc_id, False, revision, modified, origin, seq), body))
    found = found[skip:][: limit if limit is not None else None]
    stored = {v.doc_id: v for v, _ in found}
    views = views_read(collection_id=collection_id, ids=list(stored), stored=stored)
    for version, body in found:
        view = views[version.doc_id]
        row = {"id": version.doc_id, "key": version.doc_id, "value": {"rev": view.head}}
        if include_docs:
            row["doc"] = doc_render(version.doc_id, view, body)
        rows.append(row)
    return {"total_rows": total, "offset": skip, "rows": rows}


# --- _local documents (replication checkpoints) ----------------------------------------------


def local_read(*, grant: DatabaseGrant, doc_id: str) -> tuple[str, dict[str, Any]] | None:
    """A `_local` document's (rev, body), or None (couchdb/checkpoints.py holds them)."""
    found = (
        LocalDocument.objects.filter(collection_id=grant.collection_id, doc_id=doc_id)
        .values_list("rev", "body")
        .first()
    )
    return (found[0], dict(found[1])) if found is not None else None


def locals_save(*, rows: Mapping[tuple[int, str], tuple[str, dict[str, Any]]]) -> None:
    """Store checkpoints written behind (couchdb/checkpoints.py), in one transaction."""
    with transaction.atomic():
        for (collection_id, doc_id), (rev, body) in rows.items():
            LocalDocument.objects.update_or_create(
                collection_id=collection_id, doc_id=doc_id, defaults={"rev": rev, "body": body}
            )


def local_delete(*, grant: DatabaseGrant, doc_id: str) -> None:
    deleted, _ = LocalDocument.objects.filter(
        collection_id=grant.collection_id, doc_id=doc_id
    ).delete()
    if not deleted:
        raise CouchError(404, "not_found", "missing")
