from typing import Any

from django.apps import apps
from django.contrib import admin
from guardian.admin import GuardedModelAdminMixin

from accounts.models import AuditEntry, KeyRule, Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """The audit log, read-only: entries are written by the services (accounts/audit.py)."""

    list_display = ["at", "actor_name", "tenant_slug", "action", "target"]
    list_filter = ["action", "tenant"]
    search_fields = ["actor_name", "target", "action"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    search_fields = ["user__username", "tenant__slug"]
    list_select_related = ["user", "tenant"]


@admin.register(KeyRule)
class KeyRuleAdmin(admin.ModelAdmin):
    """Key rules per collection; docs/access.md explains the order they are tried in."""

    list_display = [
        "tenant",
        "collection_name",
        "position",
        "effect",
        "for_read",
        "for_write",
        "for_delete",
        "pattern",
        "subject",
    ]
    list_filter = ["tenant", "effect"]
    search_fields = ["collection_name", "pattern", "user__username", "group__name"]
    list_select_related = ["tenant", "user", "group"]
    autocomplete_fields = ["user", "group"]
    ordering = ["tenant__slug", "collection_name", "position", "id"]


def collection_admin_with_object_permissions() -> None:
    """Give the Collection admin guardian's "Object permissions" page.

    `replication.admin` registers the Collection admin; accounts may not import replication,
    so the registered class is wrapped here, by model name, once every admin module is loaded
    (AccountsConfig.ready runs after the admin's autodiscovery).
    """

    model = apps.get_model("replication", "Collection")
    registered = admin.site._registry.get(model)
    if registered is None or isinstance(registered, GuardedModelAdminMixin):
        return
    guarded = type(
        "Guarded" + type(registered).__name__,
        (GuardedModelAdminMixin, type(registered)),
        {"__module__": __name__},
    )
    admin.site.unregister(model)
    admin.site.register(model, guarded)
