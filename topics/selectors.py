"""Every read of the topics domain that more than one caller needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min, Q

from accounts.models import Tenant
from topics.models import ConsumerOffset, Message, Scope, Topic


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as `list` shows it (PROTOCOL.md section 7)."""

    id: int
    name: str
    scope: str
    owner: str | None
    owner_id: int | None
    page_size: int
    last_offset: int
    first_offset: int | None
    message_count: int
    retention_days: int | None
    retention_count: int | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "owner": self.owner,
            "pageSize": self.page_size,
            "lastOffset": self.last_offset,
            "firstOffset": self.first_offset,
            "messageCount": self.message_count,
            "retentionDays": self.retention_days,
            "retentionCount": self.retention_count,
        }


def _visible(*, tenant: Tenant, user_id: int) -> Any:
    return Topic.objects.filter(tenant=tenant).filter(
        Q(scope=Scope.GLOBAL) | Q(scope=Scope.LOCAL, owner_id=user_id)
    )


def topic_list(*, tenant: Tenant, user_id: int) -> list[TopicInfo]:
    """The topics of the tenant the user can see, with message count, first and last offset."""
    rows = (
        _visible(tenant=tenant, user_id=user_id)
        .select_related("owner")
        .annotate(message_count=Count("messages"), first_offset=Min("messages__offset"))
        .order_by("name", "scope")
    )
    return [
        TopicInfo(
            id=t.pk,
            name=t.name,
            scope=t.scope,
            owner=t.owner.get_username() if t.owner is not None else None,
            owner_id=t.owner_id,
            page_size=t.page_size,
            last_offset=t.last_offset,
            first_offset=t.first_offset,
            message_count=t.message_count,
            retention_days=t.retention_days,
            retention_count=t.retention_count,
        )
        for t in rows
    ]


def topic_find(*, tenant: Tenant, user_id: int, name: str) -> Topic | None:
    """The topic `name` means to this user: their own local topic, else the global one.

    Returns topics the user cannot see too (another user's local topic is never returned);
    callers still ask `accounts.access`.
    """
    candidates = list(
        _visible(tenant=tenant, user_id=user_id).filter(name=name).order_by("scope")[:2]
    )
    for topic in candidates:
        if topic.scope == Scope.LOCAL:
            return topic
    return candidates[0] if candidates else None


@dataclass(frozen=True, slots=True)
class TopicMessage:
    offset: int
    message_id: str
    payload: Any
    publisher: str | None
    published_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "messageId": self.message_id,
            "payload": self.payload,
            "publisher": self.publisher,
            "publishedAt": self.published_ms,
        }


def messages_read(
    *, topic_id: int, from_offset: int, limit: int, up_to: int | None = None
) -> tuple[list[TopicMessage], int] | None:
    """Messages with `from_offset <= offset <= up_to`, in offset order, at most `limit`, and
    the topic's last offset. None if the topic no longer exists."""
    last = Topic.objects.filter(pk=topic_id).values_list("last_offset", flat=True).first()
    if last is None:
        return None
    rows = Message.objects.filter(topic_id=topic_id, offset__gte=from_offset)
    if up_to is not None:
        rows = rows.filter(offset__lte=up_to)
    found = [
        TopicMessage(
            offset=m["offset"],
            message_id=m["message_id"],
            payload=m["payload"],
            publisher=m["publisher__username"],
            published_ms=int(m["published_at"].timestamp() * 1000),
        )
        for m in rows.order_by("offset").values(
            "offset", "message_id", "payload", "publisher__username", "published_at"
        )[:limit]
    ]
    return found, int(last)


def committed_offset(*, topic_id: int, user_id: int, device: str) -> int:
    found = (
        ConsumerOffset.objects.filter(topic_id=topic_id, user_id=user_id, device=device)
        .values_list("committed", flat=True)
        .first()
    )
    return int(found or 0)


def topic_last_offsets(*, topic_ids: list[int]) -> dict[int, int]:
    """Each existing topic's last offset (missing ids were deleted)."""
    return dict(Topic.objects.filter(pk__in=topic_ids).values_list("pk", "last_offset"))
