"""Every access decision in DataGate, in one place.

Each `access_*` function answers one question with a bool, one condition a line. Callers (the
sync consumer, the topics consumer, the console, the HTTP API) turn a False into their own
error code. A collection the user may not read must look exactly like one that does not exist,
so callers report both as "collection not found".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from accounts.models import Membership, Role, Tenant

# Role lookups memoised for the span of one unit of work (see `roles_memoised`).
_ROLE_MEMO: ContextVar[dict[tuple[int, int], str | None] | None] = ContextVar(
    "datagate_role_memo", default=None
)


@contextmanager
def roles_memoised() -> Iterator[None]:
    """Within the block, look each (user, tenant) role up once.

    For work that checks many items under one decision context, such as a pushed chunk whose
    every change is checked with `access_document_write`: one membership query per chunk, not
    one per document (the per-document query was 66% of a pushing server's CPU,
    bench/RESULTS.md). A role change takes effect from the next block.
    """
    token = _ROLE_MEMO.set({})
    try:
        yield
    finally:
        _ROLE_MEMO.reset(token)


def membership_role(*, user: Any, tenant: Tenant) -> str | None:
    """The user's role in the tenant, or None."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    memo = _ROLE_MEMO.get()
    key = (user.pk, tenant.pk)
    if memo is not None and key in memo:
        return memo[key]
    role = (
        Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True).first()
    )
    if memo is not None:
        memo[key] = role
    return role


def access_tenant_read(*, user: Any, tenant: Tenant) -> bool:
    return membership_role(user=user, tenant=tenant) is not None


def access_tenant_admin(*, user: Any, tenant: Tenant) -> bool:
    return membership_role(user=user, tenant=tenant) == Role.ADMIN


def access_collection_create(*, user: Any, tenant: Tenant) -> bool:
    role = membership_role(user=user, tenant=tenant)
    return role in (Role.ADMIN, Role.WRITER)


def access_collection_read(*, user: Any, tenant: Tenant, collection_name: str) -> bool:
    return membership_role(user=user, tenant=tenant) is not None


def access_collection_write(*, user: Any, tenant: Tenant, collection_name: str) -> bool:
    role = membership_role(user=user, tenant=tenant)
    return role in (Role.ADMIN, Role.WRITER)


def access_document_read(*, user: Any, tenant: Tenant, collection_name: str, doc_id: str) -> bool:
    return access_collection_read(user=user, tenant=tenant, collection_name=collection_name)


def access_document_write(*, user: Any, tenant: Tenant, collection_name: str, doc_id: str) -> bool:
    return access_collection_write(user=user, tenant=tenant, collection_name=collection_name)


def access_document_delete(*, user: Any, tenant: Tenant, collection_name: str, doc_id: str) -> bool:
    return access_collection_write(user=user, tenant=tenant, collection_name=collection_name)


def document_read_filter(
    *, user: Any, tenant: Tenant, collection_name: str
) -> Callable[[str], bool] | None:
    """A predicate on document ids the user may read, decided once per session or request.

    None means "every document of the collection": the fast path, with no per-id check.
    Callers that send documents (pull, live feeds, HTTP reads) apply it to every id.
    """
    return None


# --- topics -------------------------------------------------------------------------------
# Callers pass the topic's attributes, not the topic: accounts never imports topics.
# A local topic the user may not see must look exactly like one that does not exist.


def access_topic_connect(*, user: Any, tenant: Tenant) -> bool:
    return membership_role(user=user, tenant=tenant) is not None


def access_topic_see(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    if membership_role(user=user, tenant=tenant) is None:
        return False
    return scope == "global" or owner_id == user.pk


def access_topic_create(*, user: Any, tenant: Tenant, scope: str) -> bool:
    role = membership_role(user=user, tenant=tenant)
    return role in (Role.ADMIN, Role.WRITER)


def access_topic_publish(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    role = membership_role(user=user, tenant=tenant)
    if role not in (Role.ADMIN, Role.WRITER):
        return False
    return access_topic_see(user=user, tenant=tenant, scope=scope, owner_id=owner_id)


def access_topic_subscribe(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    return access_topic_see(user=user, tenant=tenant, scope=scope, owner_id=owner_id)


def access_topic_delete(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    if not access_topic_see(user=user, tenant=tenant, scope=scope, owner_id=owner_id):
        return False
    if owner_id is not None and owner_id == user.pk:
        return True
    return membership_role(user=user, tenant=tenant) == Role.ADMIN
