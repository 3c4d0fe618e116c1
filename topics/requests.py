"""Topics' request layer: what each request does once the caller is known.

One function per request of the topics protocol (docs/protocol.md section 7), each named
`request_<request>`. It takes the `Caller` (`request_connect` authenticates one from a token,
`request_connect_user` for an interface that has authenticated the user),
asks `accounts.access` (topics asks it here and nowhere else), then calls `topics.services`
(writes) and `topics.selectors` (reads). The layer below keeps the storage names
(`services.topic_create`, ...): no function here shares a name with one there.

Synchronous functions the websocket consumer runs with one `database_sync_to_async` call each;
the HTTP API and GraphQL call the same functions, so every door gets the same decisions. Every
refusal is a `DataGateError` with its code. A topic the user may not see is reported exactly
like one that does not exist (DG-6002).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accounts.access import (
    access_scope,
    access_topic_connect,
    access_topic_create,
    access_topic_delete,
    access_topic_publish,
    access_topic_see,
    access_topic_subscribe,
)
from accounts.models import Tenant
from accounts.tokens import TokenRejected, token_authenticate
from core.errors import DataGateError, ErrorCode
from replication.services.events import error_event_record
from topics import selectors, services
from topics.models import Topic

TOPICS_SCOPE = "topics"


@dataclass(frozen=True)
class Caller:
    """Who is on the connection: the token's user, the URL's tenant, the connect's device."""

    user: Any
    tenant: Tenant
    device: str

    @property
    def user_id(self) -> int:
        return int(self.user.pk)

    @property
    def user_name(self) -> str:
        return str(self.user.get_username())


@dataclass(frozen=True)
class Position:
    """Where a new subscription starts, and the topic's state then."""

    topic_id: int
    next_offset: int
    end: int | None
    committed: int
    last_offset: int
    batch_size: int


def request_connect(*, raw_token: object, tenant_slug: str, device: str) -> Caller:
    """Check the connect's token and the tenant, or raise a fatal error (PROTOCOL.md 4.1)."""
    try:
        info = token_authenticate(raw_token)
    except TokenRejected as exc:
        raise DataGateError(ErrorCode.TOKEN_INVALID, fatal=True, reason=exc.reason) from exc
    if not access_scope(scopes=info.scopes, scope=TOPICS_SCOPE):
        raise DataGateError(ErrorCode.TOKEN_SCOPE, fatal=True, scope=TOPICS_SCOPE)
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None or not access_topic_connect(user=info.user, tenant=tenant):
        raise DataGateError(ErrorCode.TOPIC_TENANT_NOT_FOUND, fatal=True, tenant=tenant_slug)
    return Caller(user=info.user, tenant=tenant, device=device)


def request_connect_user(*, user: Any, tenant_slug: str, device: str) -> Caller:
    """The caller of an interface that has authenticated the user already (the HTTP API and
    GraphQL check the token and its `topics` scope): the tenant must be one whose topics the
    user may use, or DG-6001 (not fatal: there is no connection to end)."""
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None or not access_topic_connect(user=user, tenant=tenant):
        raise DataGateError(ErrorCode.TOPIC_TENANT_NOT_FOUND, tenant=tenant_slug[:64])
    return Caller(user=user, tenant=tenant, device=device)


def _visible_topic(caller: Caller, name: str) -> Topic:
    topic = selectors.topic_find(tenant=caller.tenant, user_id=caller.user_id, name=name)
    if topic is None or not access_topic_see(
        user=caller.user, tenant=caller.tenant, scope=topic.scope, owner_id=topic.owner_id
    ):
        raise DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=name)
    return topic


def request_topics_list(*, caller: Caller) -> list[dict[str, Any]]:
    infos = selectors.topic_list(tenant=caller.tenant, user_id=caller.user_id)
    return [info.to_wire() for info in infos]


def request_topic_create(
    *,
    caller: Caller,
    name: str,
    scope: str,
    page_size: int | None,
    retention_days: int | None,
    retention_count: int | None,
) -> dict[str, Any]:
    if not access_topic_create(user=caller.user, tenant=caller.tenant, scope=scope):
        raise DataGateError(ErrorCode.TOPIC_CREATE_DENIED, user=caller.user_name, scope=scope)
    services.topic_create(
        tenant=caller.tenant,
        name=name,
        scope=scope,
        owner_id=caller.user_id,
        page_size=page_size,
        retention_days=retention_days,
        retention_count=retention_count,
    )
    infos = selectors.topic_list(tenant=caller.tenant, user_id=caller.user_id)
    return next(i.to_wire() for i in infos if i.name == name and i.scope == scope)


def request_topic_delete(*, caller: Caller, name: str) -> int:
    topic = _visible_topic(caller, name)
    if not access_topic_delete(
        user=caller.user, tenant=caller.tenant, scope=topic.scope, owner_id=topic.owner_id
    ):
        raise DataGateError(ErrorCode.TOPIC_DELETE_DENIED, user=caller.user_name, topic=name)
    services.topic_delete(topic_id=topic.pk)
    return int(topic.pk)


def request_messages_publish(
    *, caller: Caller, name: str, messages: list[services.Publication]
) -> tuple[list[int], int]:
    topic = _visible_topic(caller, name)
    if not access_topic_publish(
        user=caller.user, tenant=caller.tenant, scope=topic.scope, owner_id=topic.owner_id
    ):
        raise DataGateError(ErrorCode.TOPIC_PUBLISH_DENIED, user=caller.user_name, topic=name)
    offsets = services.messages_publish(
        topic_id=topic.pk, messages=messages, publisher_id=caller.user_id, device=caller.device
    )
    return offsets, int(topic.pk)


def request_subscribe(*, caller: Caller, name: str) -> int:
    topic = _visible_topic(caller, name)
    if not access_topic_subscribe(
        user=caller.user, tenant=caller.tenant, scope=topic.scope, owner_id=topic.owner_id
    ):
        raise DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=name)
    return int(topic.pk)


def request_subscribe_position(
    *,
    caller: Caller,
    name: str,
    topic_id: int,
    start_from: str | tuple[int, int | None],
    batch_size: int | None,
) -> Position:
    """Where a subscription starts. Read after the hub listens, so no bell is missed."""
    topic = Topic.objects.filter(pk=topic_id).values("last_offset", "page_size").first()
    if topic is None:
        raise DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=name)
    last = int(topic["last_offset"])
    committed = selectors.committed_offset(
        topic_id=topic_id, user_id=caller.user_id, device=caller.device
    )
    end: int | None = None
    if start_from == "beginning":
        next_offset = 1
    elif start_from == "latest":
        next_offset = last + 1
    elif start_from == "committed":
        next_offset = committed + 1
    else:
        assert isinstance(start_from, tuple)
        next_offset, end = start_from
    size = min(batch_size or topic["page_size"], topic["page_size"])
    return Position(topic_id, next_offset, end, committed, last, size)


def request_offset_commit(*, caller: Caller, name: str, topic_id: int | None, offset: int) -> int:
    if topic_id is None:
        topic_id = request_subscribe(caller=caller, name=name)
    return services.offset_commit(
        topic_id=topic_id,
        topic_name=name,
        user_id=caller.user_id,
        device=caller.device,
        offset=offset,
    )


def request_error_record(
    *, error: DataGateError, caller: Caller | None, tenant: str, topic: str
) -> None:
    error_event_record(
        error=error,
        user_id=caller.user_id if caller is not None else None,
        tenant=tenant,
        context={"endpoint": "topics", "topic": topic} if topic else {"endpoint": "topics"},
    )
