"""The console's access module: every question the console asks `accounts.access` is asked
here, and nowhere else in `console/` (an import-linter contract in pyproject.toml fails the
build otherwise; docs/architecture.md, "Where does the access check for X live").

The decisions are `accounts.access`'s; what this module adds is how the console answers one:
- a tenant the user may not read does not exist for them (404, like the sync protocol), and
  neither does a topic they may not see nor a document they may not read, stored or not;
- the maintenance pages do not exist for anyone but a server admin (404);
- a change the user may not make answers 403: the pages ask the `may_*` questions below to
  hide their buttons and refuse a POST; the write services refuse it again for the acting user.
The live dashboard (console/consumers.py) asks `tenant_readable` again on every push.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import Http404, HttpRequest

from accounts import access
from accounts.access import DocumentPolicy
from accounts.models import Tenant
from replication.models import Collection
from topics.models import Topic


@dataclass(frozen=True)
class TenantAccess:
    """The tenant of a console page, and what the user may do in it."""

    tenant: Tenant
    can_admin: bool
    can_write: bool


def tenant_or_404(request: HttpRequest, slug: str) -> TenantAccess:
    """The tenant if the user may read it; otherwise it does not exist for them (404)."""
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None or not access.access_tenant_read(user=request.user, tenant=tenant):
        raise Http404("No such tenant.")
    return TenantAccess(
        tenant=tenant,
        can_admin=access.access_tenant_admin(user=request.user, tenant=tenant),
        can_write=access.access_collection_write(
            user=request.user, tenant=tenant, collection_name=""
        ),
    )


def tenant_readable(*, user: Any, tenant: Tenant) -> bool:
    """Whether the user may read the tenant (the live dashboard asks before every push)."""
    return access.access_tenant_read(user=user, tenant=tenant)


def navigation_tenants(*, user: Any) -> dict[Tenant, str]:
    """The tenants the user may open, with their role in each (the console's navigation)."""
    return access.tenant_roles(user=user)


def server_admin_or_404(request: HttpRequest) -> None:
    """The server-wide maintenance pages exist for server admins only."""
    if not access.access_server_admin(user=request.user):
        raise Http404("No such page.")


def collection_policy(
    request: HttpRequest, tenant_access: TenantAccess, coll: Collection
) -> DocumentPolicy:
    """What the user may do with the collection's documents, decided once per request."""
    return member_policy(user=request.user, tenant_access=tenant_access, coll=coll)


def member_policy(*, user: Any, tenant_access: TenantAccess, coll: Collection) -> DocumentPolicy:
    """What `user` (any user, e.g. for the "who may read this document" explainer) may do
    with the collection's documents: the same decision a replica of theirs would get."""
    return access.document_policy(
        user=user, tenant=tenant_access.tenant, collection_name=coll.name, collection=coll
    )


def member_role(*, user: Any, tenant: Tenant) -> str | None:
    """The user's role in the tenant, or None if they are not a member."""
    return access.membership_role(user=user, tenant=tenant)


def document_readable_or_404(policy: DocumentPolicy, doc_id: str) -> None:
    """A document the user may not read does not exist for them, stored or not."""
    if not policy.may_read(doc_id):
        raise Http404("No such document.")


def may_create_collection(request: HttpRequest, tenant_access: TenantAccess) -> bool:
    return access.access_collection_create(user=request.user, tenant=tenant_access.tenant)


def may_administer_collection(
    request: HttpRequest, tenant_access: TenantAccess, coll: Collection
) -> bool:
    return access.access_collection_admin(
        user=request.user, tenant=tenant_access.tenant, collection_name=coll.name, collection=coll
    )


def topic_visible_or_404(
    request: HttpRequest, tenant_access: TenantAccess, topic: Topic | None
) -> Topic:
    """The topic, if the user may see it; otherwise it does not exist for them (None: not
    stored)."""
    if topic is None or not access.access_topic_see(
        user=request.user, tenant=tenant_access.tenant, scope=topic.scope, owner_id=topic.owner_id
    ):
        raise Http404("No such topic.")
    return topic


def may_publish_topic(request: HttpRequest, tenant_access: TenantAccess, topic: Topic) -> bool:
    return access.access_topic_publish(
        user=request.user, tenant=tenant_access.tenant, scope=topic.scope, owner_id=topic.owner_id
    )
