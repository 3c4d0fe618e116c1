"""Single-document writes for an acting user: the console, the HTTP API, GraphQL, commands.

`collection_for_writer` is the collection such a write goes to (the HTTP API and GraphQL),
created on the first write when the user may create collections.

`document_put` and `document_delete` give the document its next revision and a `_modified`
after what is stored, check `expected_revision` (DG-4009), and write through the write engine
(`services.engine.batch_apply`) with the same access decision as every other write: a change
the actor may not make raises its DataGateError before anything stored is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import transaction

from accounts import access
from accounts.access import DocumentPolicy
from accounts.audit import audit_record
from accounts.models import Tenant
from core.door import id_check
from core.errors import DataGateError, ErrorCode
from replication.models import Collection, Document, Tombstone
from replication.protocol.conflicts import DELETE, WRITE
from replication.selectors import collection_for_reader
from replication.services.engine import (
    Actor,
    ApplyResult,
    acting_user,
    actor_policy,
    actor_refusal,
    batch_apply,
    collection_get_or_create,
    now_ms,
)


def collection_for_writer(*, user: Any, tenant_slug: str, name: str) -> Collection:
    """The collection `user` may write, created on first write if they may create it (the
    HTTP API and GraphQL); DG-3001 as for a reader, DG-3002 if they may only read it."""
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    exists = Collection.objects.filter(tenant=tenant, name=name).exists()
    if (
        tenant is not None
        and not exists
        and settings.DATAGATE["AUTO_CREATE_COLLECTIONS"]
        and access.access_collection_create(user=user, tenant=tenant)
    ):
        try:
            return collection_get_or_create(tenant=tenant, name=name)[0]
        except Exception as problem:  # a name the slug validator refuses
            raise DataGateError(
                ErrorCode.BAD_PARAMETER, name="collection", detail="not a valid collection name"
            ) from problem
    collection = collection_for_reader(user=user, tenant_slug=tenant_slug, name=name)
    if not access.access_collection_write(
        user=user, tenant=collection.tenant, collection_name=name, collection=collection
    ):
        raise DataGateError(ErrorCode.READ_ONLY, user=user.get_username())
    return collection


def _next_stamp(current_modified: int | None) -> int:
    """A `_modified` that orders after what is stored, even if this clock is behind."""
    stamp = now_ms()
    if current_modified is not None and stamp <= current_modified:
        stamp = current_modified + 1
    return stamp


def _write_allowed(
    *, actor: Actor, collection_id: int, doc_id: str, kind: int
) -> DocumentPolicy | None:
    """The door and the access decision, before anything stored is looked at: an id outside
    the door's rules is DG-4002, a change the actor may not make raises its DataGateError."""
    id_check(doc_id)
    policy = actor_policy(actor=actor, collection_id=collection_id)
    refusal = actor_refusal(actor=actor, policy=policy, kind=kind, doc_id=doc_id)
    if refusal is not None:
        raise refusal
    return policy


def _locked_current(*, collection_id: int, doc_id: str) -> Document | None:
    """Inside the caller's transaction: lock the collection (writes to it queue behind this
    one), then read the document's current version."""
    Collection.objects.select_for_update().only("id").get(pk=collection_id)
    return Document.objects.filter(collection_id=collection_id, doc_id=doc_id).first()


def _revision_expect(*, doc_id: str, expected: int | None, held: int) -> None:
    """A write or delete with `expected_revision` happens only if the stored revision is that
    one (0: the document must not exist); otherwise DG-4009."""
    if expected is not None and expected != held:
        raise DataGateError(
            ErrorCode.REVISION_CONFLICT, doc_id=doc_id, expected=expected, actual=held
        )


def document_put(
    *,
    actor: Actor,
    collection_id: int,
    doc_id: str,
    body: Mapping[str, Any],
    origin: str,
    expected_revision: int | None = None,
    audit: bool = False,
) -> ApplyResult:
    """Write one document for `actor` (console, HTTP API, commands): next revision, now.

    With `audit` (an operator's edit in the console), the write is recorded in the audit log
    in its own transaction.

    A write the actor may not make raises its DataGateError (DG-3002, DG-3003) before
    anything about the stored document is looked at. With `expected_revision`, the write
    only happens if the stored revision is that one (0 means "must not exist"); otherwise
    DG-4009 is raised. An id outside the door's rules is DG-4002 before any query.
    """
    policy = _write_allowed(actor=actor, collection_id=collection_id, doc_id=doc_id, kind=WRITE)
    with transaction.atomic():
        current = _locked_current(collection_id=collection_id, doc_id=doc_id)
        tomb = Tombstone.objects.filter(collection_id=collection_id, doc_id=doc_id).first()
        held_revision = current.revision if current else 0
        _revision_expect(doc_id=doc_id, expected=expected_revision, held=held_revision)
        revision = max(held_revision, tomb.revision if tomb else 0) + 1
        last = max(current.modified if current else 0, tomb.deleted_at if tomb else 0) or None
        doc = dict(body)
        doc.update(
            {
                "_id": doc_id,
                "_revision": revision,
                "_modified": _next_stamp(last),
                "_origin": origin,
            }
        )
        result = batch_apply(
            actor=actor,
            collection_id=collection_id,
            feed={"changeSet": [doc]},
            origin=origin,
            policy=policy,
        )
        if audit and not result.rejected:
            _document_audit(actor, collection_id, doc_id, "document.put", revision)
    if result.rejected:
        raise result.rejected[0].error
    return result


def _document_audit(
    actor: Actor, collection_id: int, doc_id: str, action: str, revision: int
) -> None:
    collection = Collection.objects.select_related("tenant").get(pk=collection_id)
    audit_record(
        actor=acting_user(actor),
        action=action,
        target=f"{collection}/{doc_id}",
        tenant=collection.tenant,
        detail={"revision": revision},
    )


def document_delete(
    *,
    actor: Actor,
    collection_id: int,
    doc_id: str,
    origin: str,
    expected_revision: int | None = None,
    audit: bool = False,
) -> ApplyResult:
    """Delete one document for `actor`; a missing document is not an error. A delete the
    actor may not make raises its DataGateError (DG-3002, DG-3004) first; an id outside the
    door's rules is DG-4002 before any query."""
    policy = _write_allowed(actor=actor, collection_id=collection_id, doc_id=doc_id, kind=DELETE)
    with transaction.atomic():
        current = _locked_current(collection_id=collection_id, doc_id=doc_id)
        held_revision = current.revision if current else 0
        _revision_expect(doc_id=doc_id, expected=expected_revision, held=held_revision)
        if current is None:
            # Still write the tombstone (or move it forward): a replica may hold an unpushed
            # older version of this id, and an acknowledged delete must win over it when it
            # arrives (found by the chaos run: docs/guarantees.md).
            held = Tombstone.objects.filter(collection_id=collection_id, doc_id=doc_id).first()
            stamp = _next_stamp(held.deleted_at if held else None)
        else:
            stamp = _next_stamp(current.modified)
        result = batch_apply(
            actor=actor,
            collection_id=collection_id,
            feed={"tombstoneMap": {doc_id: stamp}},
            origin=origin,
            policy=policy,
        )
        if audit and not result.rejected:
            _document_audit(actor, collection_id, doc_id, "document.delete", held_revision)
    if result.rejected:
        raise result.rejected[0].error
    return result
