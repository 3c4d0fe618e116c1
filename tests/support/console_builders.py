"""Small builders for console tests: replicas, error events and journal rows in bulk."""

from __future__ import annotations

from typing import Any

from core.errors import DataGateError, ErrorCode
from replication.models import ErrorEvent, Replica
from replication.services.events import error_event_record
from replication.services.replicas import replica_connected


def make_replicas(*, collection: Any, user: Any, count: int, online: bool = True) -> list[Replica]:
    """`count` replicas at once (bulk), half of them behind, each with an error event."""
    replicas = Replica.objects.bulk_create(
        [
            Replica(
                collection=collection,
                user=user,
                replica_id=f"device-{i:05d}",
                name=f"app-{i % 7}",
                online=online,
                last_acked_seq=i % 2,
                pushed_count=i,
                pulled_count=2 * i,
            )
            for i in range(count)
        ]
    )
    saved = list(Replica.objects.filter(collection=collection).order_by("pk"))
    ErrorEvent.objects.bulk_create(
        [
            ErrorEvent(
                code="DG-2004",
                text="DG-2004 invalid batch: x",
                replica=r,
                user=user,
                tenant=collection.tenant.slug,
                collection=collection.name,
            )
            for r in saved
        ]
    )
    del replicas
    return saved


def connect_replica(*, collection: Any, user: Any, replica_id: str = "phone-1") -> Replica:
    return replica_connected(
        collection_id=collection.pk, replica_id=replica_id, user_id=user.pk, name="notes-app"
    )


def record_error(
    *, collection: Any, user: Any, replica: Replica | None = None, code: ErrorCode
) -> ErrorEvent:
    error = DataGateError(
        code,
        tenant=collection.tenant.slug,
        collection=collection.name,
        detail="made by a test",
        message_type="no2.sync.feed",
        user=user.get_username(),
    )
    return error_event_record(
        error=error,
        user_id=user.pk,
        replica_pk=replica.pk if replica else None,
        tenant=collection.tenant.slug,
        collection=collection.name,
    )
