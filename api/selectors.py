"""Reads for the HTTP API: tenants, collection stats and document pages.

No access decision is made here: what a caller may read of a tenant or a collection comes
from the reads for an acting user in `replication.selectors` (shared with GraphQL), the token's
scopes from `api.permissions`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db.models import QuerySet
from django.db.models.fields.json import KeyTransform

from accounts.models import Membership, Role, Tenant
from core.errors import DataGateError, ErrorCode
from replication.models import Collection, Document, Replica, Tombstone
from replication.protocol.markers import Markers
from search.models import SearchIndex

FILTER_FIELD = re.compile(r"^[^._\s=][^.\s=]*(\.[^.\s=]+)*$")
MAX_FILTERS = 10


def tenants_visible(*, user: Any) -> list[tuple[Tenant, str]]:
    """(tenant, role) for every tenant the user belongs to; a superuser sees all as admin."""
    if user.is_superuser:
        return [(tenant, Role.ADMIN.value) for tenant in Tenant.objects.order_by("slug")]
    memberships = Membership.objects.filter(user=user).select_related("tenant")
    return [(m.tenant, m.role) for m in memberships.order_by("tenant__slug")]


def tenant_find(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).first()


def collection_stats(*, collection: Collection) -> dict[str, Any]:
    replicas = Replica.objects.filter(collection=collection)
    fields = (
        SearchIndex.objects.filter(collection=collection).values_list("fields", flat=True).first()
    )
    return {
        "name": collection.name,
        "tenant": collection.tenant.slug,
        "markers": Markers(collection.last_seq, collection.epoch).to_wire(),
        "purgeMarker": collection.purge_seq,
        "documents": Document.objects.filter(collection=collection).count(),
        "tombstones": Tombstone.objects.filter(collection=collection).count(),
        "replicas": replicas.count(),
        "replicasOnline": replicas.filter(online=True).count(),
        "tombstoneTtlDays": collection.effective_tombstone_ttl_days,
        "searchFields": list(fields or []),
        "createdAt": collection.created_at.isoformat(),
    }


def _filter_value(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(value, dict | list):
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="filter", detail="values must be scalars")
    return value


def document_filters(raw_filters: list[str]) -> list[tuple[list[str], Any]]:
    """Parse `filter=field=value` parameters into (path, value) pairs, or DG-8003."""
    if len(raw_filters) > MAX_FILTERS:
        raise DataGateError(
            ErrorCode.BAD_PARAMETER, name="filter", detail=f"at most {MAX_FILTERS} filters"
        )
    parsed: list[tuple[list[str], Any]] = []
    for raw in raw_filters:
        name, sep, value = raw.partition("=")
        if not sep or len(name) > 200 or not FILTER_FIELD.match(name):
            raise DataGateError(
                ErrorCode.BAD_PARAMETER,
                name="filter",
                detail=f"{raw[:40]!r} is not field=value",
            )
        parsed.append((name.split("."), _filter_value(value)))
    return parsed


def documents_page(
    *,
    collection_id: int,
    after: str | None,
    limit: int,
    filters: list[tuple[list[str], Any]],
) -> list[Document]:
    """Up to `limit` live documents ordered by id, after the id `after`, matching `filters`."""
    queryset: QuerySet[Document] = Document.objects.filter(collection_id=collection_id)
    for index, (path, value) in enumerate(filters):
        expression: Any = "body"
        for part in path:
            expression = KeyTransform(part, expression)
        alias = f"dg_filter_{index}"
        queryset = queryset.alias(**{alias: expression}).filter(**{alias: value})
    if after is not None:
        queryset = queryset.filter(doc_id__gt=after)
    return list(queryset.order_by("doc_id")[:limit])


def document_get(*, collection_id: int, doc_id: str) -> Document | None:
    return Document.objects.filter(collection_id=collection_id, doc_id=doc_id).first()
