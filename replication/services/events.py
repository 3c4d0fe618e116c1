"""Error events: what the console's error pages and the dashboard show.

Every interface records the DataGateErrors it answers with here (rejected changes, refused
frames, DG-5005 unservable documents), with the user, replica, tenant and collection they
concern. What is recorded about bad input is made storable first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.door import storable
from core.errors import DataGateError, ErrorCode
from replication.models import Collection, ErrorEvent


def error_event_record(
    *,
    error: DataGateError,
    user_id: int | None = None,
    replica_pk: int | None = None,
    tenant: str = "",
    collection: str = "",
    context: Mapping[str, Any] | None = None,
) -> ErrorEvent:
    # What is recorded about bad input may hold NUL or lone surrogates: neither backend's
    # text or JSON columns take both, and a refused write must never become a 500.
    return ErrorEvent.objects.create(
        code=error.code,
        text=storable(error.text[:200]),
        fatal=error.fatal,
        user_id=user_id,
        replica_id=replica_pk,
        tenant=storable(tenant[:64]),
        collection=storable(collection[:64]),
        context=storable(dict(context or {})),
    )


def unservable_record(
    *,
    collection_id: int,
    skipped: Sequence[tuple[str, str]],
    via: str,
    user_id: int | None = None,
    replica_pk: int | None = None,
) -> None:
    """Record DG-5005: stored documents left out of a frame or page because they cannot be
    encoded (docs/decisions/0013). One event per page; `datagate_verify` finds the rows."""
    if not skipped:
        return
    names = Collection.objects.filter(pk=collection_id).values_list("tenant__slug", "name").first()
    tenant, name = names if names is not None else ("", "")
    doc_id, reason = skipped[0]
    error_event_record(
        error=DataGateError(ErrorCode.UNSERVABLE_SKIPPED, doc_id=doc_id, reason=reason),
        user_id=user_id,
        replica_pk=replica_pk,
        tenant=tenant,
        collection=name,
        context={
            "via": via,
            "skipped": len(skipped),
            "ids": [[doc, why] for doc, why in skipped[:20]],
        },
    )
