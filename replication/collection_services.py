"""Collection management: create, delete, and per-collection tombstone TTL and journal retention.

The console, `datagate_collection` and the HTTP API call these with the acting user (or a
`System` for a command); each one decides access through `accounts.access` and writes its
audit entry in the same transaction (accounts/audit.py). Errors are DG-72xx (docs/errors.md).
"""

from __future__ import annotations

from typing import IO, Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from guardian.models import GroupObjectPermission, UserObjectPermission

from accounts import access
from accounts.access import System
from accounts.audit import audit_record
from accounts.models import Tenant
from core.errors import DataGateError, ErrorCode
from replication.models import Collection
from replication.transfer import (
    ExportReport,
    ImportReport,
    TextSink,
    collection_export,
    collection_import,
)

MAX_DAYS = 3650
SETTINGS = ("tombstone_ttl_days", "journal_retention_days")


def _user_name(actor: Any) -> str:
    return f"system: {actor.purpose}" if isinstance(actor, System) else actor.get_username()


def _days(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise DataGateError(
            ErrorCode.COLLECTION_BAD_SETTING,
            name=name,
            detail=f"{value!r} is not a whole number of days from 1 to {MAX_DAYS}",
        )
    return value


def _check_admin(*, actor: Any, collection: Collection, action: str) -> None:
    if isinstance(actor, System):
        return
    if not access.access_collection_admin(
        user=actor, tenant=collection.tenant, collection_name=collection.name, collection=collection
    ):
        raise DataGateError(
            ErrorCode.COLLECTION_ADMIN_DENIED,
            user=_user_name(actor),
            action=action,
            tenant=collection.tenant.slug,
            collection=collection.name,
        )


def collection_for_admin(*, actor: Any, tenant: Tenant, name: str) -> Collection:
    """The collection, if the actor may see it (DG-3001 otherwise, as for a missing one)."""
    found = Collection.objects.select_related("tenant").filter(tenant=tenant, name=name).first()
    if found is None or not (
        isinstance(actor, System)
        or access.access_collection_read(
            user=actor, tenant=tenant, collection_name=name, collection=found
        )
    ):
        raise DataGateError(ErrorCode.COLLECTION_NOT_FOUND, tenant=tenant.slug, collection=name)
    return found


def collection_create(
    *,
    actor: Any,
    tenant: Tenant,
    name: str,
    tombstone_ttl_days: int | None = None,
    journal_retention_days: int | None = None,
) -> Collection:
    """A new empty collection (DG-7201 if it exists, DG-7202 if the actor may not)."""
    if not isinstance(actor, System) and not access.access_collection_create(
        user=actor, tenant=tenant
    ):
        raise DataGateError(
            ErrorCode.COLLECTION_CREATE_DENIED, user=_user_name(actor), tenant=tenant.slug
        )
    collection = Collection(
        tenant=tenant,
        name=name,
        tombstone_ttl_days=_days("tombstone_ttl_days", tombstone_ttl_days),
        journal_retention_days=_days("journal_retention_days", journal_retention_days),
    )
    try:
        collection.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise DataGateError(
            ErrorCode.COLLECTION_BAD_SETTING, name="name", detail="; ".join(exc.messages)
        ) from exc
    try:
        with transaction.atomic():
            collection.save()
            audit_record(
                actor=actor,
                action="collection.create",
                target=str(collection),
                tenant=tenant,
                detail=_settings_of(collection),
            )
    except IntegrityError as exc:
        raise DataGateError(
            ErrorCode.COLLECTION_EXISTS, tenant=tenant.slug, collection=name
        ) from exc
    return collection


def _settings_of(collection: Collection) -> dict[str, Any]:
    return {name: getattr(collection, name) for name in SETTINGS}


def collection_settings_set(
    *,
    actor: Any,
    collection: Collection,
    tombstone_ttl_days: int | None,
    journal_retention_days: int | None,
) -> Collection:
    """Set both settings (None: the server default); DG-7203 without the right to."""
    _check_admin(actor=actor, collection=collection, action="change")
    before = _settings_of(collection)
    collection.tombstone_ttl_days = _days("tombstone_ttl_days", tombstone_ttl_days)
    collection.journal_retention_days = _days("journal_retention_days", journal_retention_days)
    with transaction.atomic():
        collection.save(update_fields=list(SETTINGS))
        audit_record(
            actor=actor,
            action="collection.settings",
            target=str(collection),
            tenant=collection.tenant,
            detail={"before": before, "after": _settings_of(collection)},
        )
    return collection


def collection_delete(*, actor: Any, collection: Collection, confirm: str) -> dict[str, int]:
    """Delete the collection with its documents, tombstones, journal and grants.

    `confirm` must repeat the collection's name (DG-7205). Returns the counts deleted.
    """
    _check_admin(actor=actor, collection=collection, action="delete")
    if confirm != collection.name:
        raise DataGateError(
            ErrorCode.COLLECTION_DELETE_UNCONFIRMED,
            tenant=collection.tenant.slug,
            collection=collection.name,
        )
    name, tenant = str(collection), collection.tenant
    counts = {
        "documents": collection.documents.count(),
        "tombstones": collection.tombstones.count(),
    }
    content_type = ContentType.objects.get_for_model(Collection)
    with transaction.atomic():
        # guardian's object permissions point at the row by id, without a foreign key.
        for model in (UserObjectPermission, GroupObjectPermission):
            model.objects.filter(content_type=content_type, object_pk=str(collection.pk)).delete()
        collection.delete()
        audit_record(
            actor=actor, action="collection.delete", target=name, tenant=tenant, detail=counts
        )
    return counts


def collection_search_fields_set(*, actor: Any, collection: Collection, fields: list[str]) -> int:
    """Index these document fields for full-text search (none: stop indexing); rebuilds the
    index and returns how many documents it holds. DG-7203 without the right to."""
    # Inside the function: at module top replication and search would import each other.
    from search.models import SearchEntry
    from search.services import search_index_configure, search_index_remove

    _check_admin(actor=actor, collection=collection, action="index")
    with transaction.atomic():
        if fields:
            try:
                search_index_configure(collection_id=collection.pk, fields=fields)
            except ValueError as exc:
                raise DataGateError(
                    ErrorCode.COLLECTION_BAD_SETTING, name="search fields", detail=str(exc)
                ) from exc
        else:
            search_index_remove(collection_id=collection.pk)
        audit_record(
            actor=actor,
            action="collection.search",
            target=str(collection),
            tenant=collection.tenant,
            detail={"fields": fields},
        )
    return SearchEntry.objects.filter(collection_id=collection.pk).count()


def collection_export_as(*, actor: Any, collection: Collection, out: TextSink) -> ExportReport:
    """`replication.transfer.collection_export` for an operator: every document, whatever the
    key rules, so it needs the collection's administration right (DG-7203); audited."""
    _check_admin(actor=actor, collection=collection, action="export")
    report = collection_export(collection_id=collection.pk, out=out)
    audit_record(
        actor=actor,
        action="collection.export",
        target=str(collection),
        tenant=collection.tenant,
        detail={"documents": report.documents, "tombstones": report.tombstones},
    )
    return report


def collection_import_as(*, actor: Any, collection: Collection, source: IO[str]) -> ImportReport:
    """Restore an existing collection from an export (its administration right; audited)."""
    _check_admin(actor=actor, collection=collection, action="import into")
    report = collection_import(
        actor=actor, tenant=collection.tenant, name=collection.name, source=source
    )
    audit_record(
        actor=actor,
        action="collection.import",
        target=str(collection),
        tenant=collection.tenant,
        detail={"documents": report.documents, "tombstones": report.tombstones},
    )
    return report
