from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from replication.models import (
    Collection,
    Document,
    ErrorEvent,
    JournalEntry,
    MaintenanceRun,
    QuarantinedDocument,
    Replica,
    Tombstone,
)
from replication.services.documents import document_delete, document_put


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "last_seq", "purge_seq", "tombstone_ttl_days", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "last_seq",
        "purge_seq",
        "purge_horizon_ms",
        "journal_pruned_seq",
        "epoch",
        "created_at",
    ]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["doc_id", "collection", "revision", "modified", "origin", "seq"]
    list_filter = ["collection__tenant", "collection"]
    search_fields = ["doc_id"]
    list_select_related = ["collection__tenant"]
    readonly_fields = ["collection", "doc_id", "revision", "modified", "origin", "seq"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # Admin edits replicate like any other change: through the service, never .save().

        document_put(
            actor=request.user,
            collection_id=obj.collection_id,
            doc_id=obj.doc_id,
            body=obj.body,
            origin="server:admin",
        )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        document_delete(
            actor=request.user,
            collection_id=obj.collection_id,
            doc_id=obj.doc_id,
            origin="server:admin",
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is not None and super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk delete would skip the journal
        return actions


@admin.register(Tombstone)
class TombstoneAdmin(admin.ModelAdmin):
    list_display = ["doc_id", "collection", "deleted_at", "revision", "origin", "seq"]
    list_filter = ["collection__tenant", "collection"]
    search_fields = ["doc_id"]
    list_select_related = ["collection__tenant"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(admin.ModelAdmin):
    list_display = ["seq", "collection", "operation", "doc_id", "revision", "origin", "created_at"]
    list_filter = ["operation", "collection__tenant", "collection"]
    search_fields = ["doc_id", "origin", "message_id"]
    list_select_related = ["collection__tenant"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = [
        "replica_id",
        "user",
        "collection",
        "online",
        "last_seen",
        "last_pushed_seq",
        "last_acked_seq",
        "pushed_count",
        "pulled_count",
    ]
    list_filter = ["online", "collection__tenant", "collection"]
    search_fields = ["replica_id", "name", "user__username"]
    list_select_related = ["user", "collection__tenant"]


@admin.register(ErrorEvent)
class ErrorEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "code", "text", "fatal", "user", "tenant", "collection"]
    list_filter = ["code", "fatal", "tenant"]
    search_fields = ["text", "code", "collection"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"


@admin.register(MaintenanceRun)
class MaintenanceRunAdmin(admin.ModelAdmin):
    """Tombstone GC, journal pruning and imports, newest first (docs/maintenance.md)."""

    list_display = ["started_at", "job", "trigger", "ok", "finished_at", "summary"]
    list_filter = ["job", "ok", "trigger"]
    search_fields = ["summary", "error"]
    date_hierarchy = "started_at"
    readonly_fields = [
        "job",
        "trigger",
        "started_at",
        "finished_at",
        "ok",
        "summary",
        "result",
        "error",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(QuarantinedDocument)
class QuarantinedDocumentAdmin(admin.ModelAdmin):
    """What `datagate_quarantine` took out (docs/maintenance.md): read-only evidence."""

    list_display = ["doc_id", "collection", "reason", "action", "revision", "quarantined_at"]
    list_filter = ["reason", "action", "collection__tenant"]
    search_fields = ["doc_id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
