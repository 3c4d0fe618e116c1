"""Every write of the topics domain. Plain synchronous functions with keyword-only arguments.

The websocket consumer, the admin and the retention command all write through here, so every
message gets its offset from the topic's counter and rings the topic's doorbell the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Tenant
from core.door import document_text, id_check, limits_from_settings
from core.errors import DataGateError, ErrorCode
from topics.doorbell import ring_on_commit
from topics.models import ConsumerOffset, Message, Scope, Topic

# An IN (...) list per query: well below SQLite's and PostgreSQL's parameter limits.
LOOKUP_BATCH = 500


@dataclass(frozen=True)
class Publication:
    """One message to publish: the client's id for it and its JSON payload."""

    message_id: str
    payload: Any


def topic_create(
    *,
    tenant: Tenant,
    name: str,
    scope: str,
    owner_id: int | None,
    page_size: int | None = None,
    retention_days: int | None = None,
    retention_count: int | None = None,
) -> Topic:
    """Create a topic, or raise DG-6003 if one of that name is visible to the owner already.

    A local name may not shadow a global topic, and a global name may not take the name of
    the owner's own local topic: a name then always means one topic to its user.
    """
    if scope not in Scope.values:
        raise ValueError(f"unknown scope {scope!r}")
    topic = Topic(
        tenant=tenant,
        name=name,
        scope=scope,
        owner_id=owner_id,
        page_size=page_size or int(settings.DATAGATE["TOPIC_PAGE_SIZE"]),
        retention_days=retention_days,
        retention_count=retention_count,
    )
    topic.full_clean(validate_constraints=False)
    clash = Q(scope=Scope.GLOBAL) | Q(scope=Scope.LOCAL, owner_id=owner_id)
    try:
        with transaction.atomic():
            if Topic.objects.filter(clash, tenant=tenant, name=name).exists():
                raise DataGateError(ErrorCode.TOPIC_EXISTS, topic=name)
            topic.save()
    except IntegrityError as exc:  # a concurrent create of the same name won
        raise DataGateError(ErrorCode.TOPIC_EXISTS, topic=name) from exc
    return topic


def topic_delete(*, topic_id: int) -> bool:
    """Delete a topic with its messages and consumer offsets; ring so subscribers notice."""
    with transaction.atomic():
        deleted, _ = Topic.objects.filter(pk=topic_id).delete()
        if deleted:
            ring_on_commit(topic_id=topic_id, offset=-1)
    return bool(deleted)


def messages_publish(
    *,
    topic_id: int,
    messages: Sequence[Publication],
    publisher_id: int | None,
    device: str = "",
    at: datetime | None = None,
) -> list[int]:
    """Append messages atomically; return each one's offset, in the order given.

    Idempotent per message id: an id the topic already holds (or that appears earlier in the
    same call) is not stored again and gets its first offset back. Offsets come from the
    topic's counter under its row lock, so concurrent publishers commit gap-free offsets in
    order (PROTOCOL.md section 7; docs/decisions/0002). A message id breaking the id rules
    (DG-4002) or a payload the document door refuses (DG-4010 to DG-4013) refuses the call.
    """
    if not messages:
        return []
    limits = limits_from_settings()
    for publication in messages:  # the one door (core.door): all or nothing
        id_check(publication.message_id)
        document_text(publication.payload, doc_id=publication.message_id, limits=limits)
    stamp = at or timezone.now()
    with transaction.atomic():
        topic = Topic.objects.select_for_update().only("id", "last_offset").get(pk=topic_id)
        wanted = list(dict.fromkeys(m.message_id for m in messages))
        known: dict[str, int] = {}
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            known.update(
                Message.objects.filter(topic_id=topic_id, message_id__in=batch).values_list(
                    "message_id", "offset"
                )
            )
        offset = topic.last_offset
        rows: list[Message] = []
        offsets: list[int] = []
        for publication in messages:
            if publication.message_id not in known:
                offset += 1
                known[publication.message_id] = offset
                rows.append(
                    Message(
                        topic_id=topic_id,
                        offset=offset,
                        message_id=publication.message_id,
                        payload=publication.payload,
                        publisher_id=publisher_id,
                        device=device[:128],
                        published_at=stamp,
                    )
                )
            offsets.append(known[publication.message_id])
        if rows:
            Message.objects.bulk_create(rows)
            Topic.objects.filter(pk=topic_id).update(last_offset=offset)
            ring_on_commit(topic_id=topic_id, offset=offset)
    return offsets


def offset_commit(*, topic_id: int, topic_name: str, user_id: int, device: str, offset: int) -> int:
    """Record that (user, device) processed the topic up to `offset`; return the stored offset.

    Committing the stored offset again is a no-op. A lower offset raises DG-6007 and one past
    the topic's last offset DG-6008; neither changes what is stored.
    """
    with transaction.atomic():
        last = Topic.objects.filter(pk=topic_id).values_list("last_offset", flat=True).first()
        if last is None:
            raise DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=topic_name)
        if offset > last:
            raise DataGateError(
                ErrorCode.COMMIT_BEYOND_END, topic=topic_name, offset=offset, last=last
            )
        row, _ = ConsumerOffset.objects.get_or_create(
            topic_id=topic_id, user_id=user_id, device=device
        )
        moved = ConsumerOffset.objects.filter(pk=row.pk, committed__lte=offset).update(
            committed=offset, updated_at=timezone.now()
        )
        if not moved:
            committed = ConsumerOffset.objects.values_list("committed", flat=True).get(pk=row.pk)
            raise DataGateError(
                ErrorCode.COMMIT_REGRESSION, topic=topic_name, offset=offset, committed=committed
            )
    return offset


@dataclass(frozen=True)
class TrimResult:
    topic_id: int
    topic: str
    by_age: int
    by_count: int

    @property
    def removed(self) -> int:
        return self.by_age + self.by_count


def topic_trim(*, topic_id: int, now: datetime | None = None, dry_run: bool = False) -> TrimResult:
    """Remove the messages past the topic's retention (age, then count). Offsets never change.

    With `dry_run`, count what would go and remove nothing.
    """
    topic = Topic.objects.select_related("tenant").get(pk=topic_id)
    messages = Message.objects.filter(topic_id=topic_id)
    aged = messages.none()
    if topic.retention_days is not None:
        horizon = (now or timezone.now()) - timedelta(days=topic.retention_days)
        aged = messages.filter(published_at__lt=horizon)
    surplus = messages.none()
    if topic.retention_count is not None:
        keep_after = topic.last_offset - topic.retention_count
        surplus = messages.filter(offset__lte=keep_after)
        if topic.retention_days is not None:
            surplus = surplus.exclude(pk__in=aged.values("pk"))
    name = f"{topic.tenant.slug}/{topic.name}"
    if dry_run:
        return TrimResult(topic_id, name, aged.count(), surplus.count())
    with transaction.atomic():
        by_age = aged.delete()[0] if topic.retention_days is not None else 0
        by_count = surplus.delete()[0] if topic.retention_count is not None else 0
    return TrimResult(topic_id, name, by_age, by_count)


def topics_trim(*, now: datetime | None = None, dry_run: bool = False) -> list[TrimResult]:
    """Apply every topic's retention (the `datagate_topics_trim` command)."""
    with_retention = Topic.objects.filter(
        Q(retention_days__isnull=False) | Q(retention_count__isnull=False)
    ).order_by("pk")
    return [
        topic_trim(topic_id=pk, now=now, dry_run=dry_run)
        for pk in with_retention.values_list("pk", flat=True)
    ]
