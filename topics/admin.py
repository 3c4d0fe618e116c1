from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from topics.models import ConsumerOffset, Message, Topic


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "tenant",
        "scope",
        "owner",
        "last_offset",
        "message_count",
        "page_size",
        "retention_days",
        "retention_count",
        "created_at",
    ]
    list_filter = ["tenant", "scope"]
    search_fields = ["name", "tenant__slug", "owner__username"]
    list_select_related = ["tenant", "owner"]
    readonly_fields = ["last_offset", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(_message_count=Count("messages"))

    @admin.display(description="messages", ordering="_message_count")
    def message_count(self, obj: Topic) -> int:
        return int(getattr(obj, "_message_count", 0))


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["offset", "topic", "message_id", "publisher", "device", "published_at"]
    list_filter = ["topic__tenant", "topic"]
    search_fields = ["message_id", "topic__name"]
    list_select_related = ["topic__tenant", "publisher"]
    ordering = ["topic", "-offset"]
    date_hierarchy = "published_at"

    # Messages are an append-only log: published through the protocol, removed by retention.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False


@admin.register(ConsumerOffset)
class ConsumerOffsetAdmin(admin.ModelAdmin):
    list_display = ["topic", "user", "device", "committed", "lag", "updated_at"]
    list_filter = ["topic__tenant", "topic"]
    search_fields = ["user__username", "device", "topic__name"]
    list_select_related = ["topic__tenant", "user"]
    readonly_fields = ["committed", "updated_at"]

    @admin.display(description="behind by")
    def lag(self, obj: ConsumerOffset) -> int:
        return max(0, obj.topic.last_offset - obj.committed)
