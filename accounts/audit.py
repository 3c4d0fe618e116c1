"""The audit log: who did what, when, on which object (operator actions, not every write).

Services call `audit_record` with their `actor` in the action's own transaction, so an action
that rolls back leaves no entry and a committed one always has one. Views and commands do not
write entries themselves: they pass the actor to the service (docs/access.md, the access door).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from accounts.access import System
from accounts.models import AuditEntry, Tenant


def actor_name(actor: Any) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, System):
        return f"system: {actor.purpose}"
    return str(actor.get_username())


def audit_record(
    *,
    actor: Any,
    action: str,
    target: str,
    tenant: Tenant | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record one action. `actor` is a user, a `System`, or None (the server)."""
    user = None if actor is None or isinstance(actor, System) else actor
    return AuditEntry.objects.create(
        actor=user if user is not None and user.pk is not None else None,
        actor_name=actor_name(actor)[:150],
        tenant=tenant,
        tenant_slug=tenant.slug if tenant is not None else "",
        action=action,
        target=target[:300],
        detail=detail or {},
    )


def audit_entries(
    *, tenant: Tenant | None = None, action: str = "", actor: str = ""
) -> QuerySet[AuditEntry]:
    """Newest first; one tenant's entries (None: every entry, for a server admin)."""
    entries = AuditEntry.objects.select_related("tenant")
    if tenant is not None:
        entries = entries.filter(tenant=tenant)
    if action:
        entries = entries.filter(action__startswith=action)
    if actor:
        entries = entries.filter(actor_name=actor)
    return entries
