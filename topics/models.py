"""Topics: append-only message logs of a tenant, with per-consumer committed offsets.

A topic's `last_offset` is the counter every published message draws its offset from, inside
the publishing transaction and under the topic's row lock (topics.services.messages_publish),
so offsets become visible in commit order and without gaps, as sequence numbers do for
collections (docs/decisions/0002-the-database-is-the-truth.md). Offsets start at 1; a
consumer's `committed` offset 0 means "nothing processed yet".

A `global` topic is visible to every member of its tenant; a `local` one only to its owner.
Global names are unique in a tenant; local names are unique per owner.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import SLUG_VALIDATOR, Tenant

MESSAGE_ID_MAX_LENGTH = 128
DEVICE_MAX_LENGTH = 128


class Scope(models.TextChoices):
    GLOBAL = "global", "Global (every member of the tenant)"
    LOCAL = "local", "Local (its owner only)"


def default_page_size() -> int:
    return int(settings.DATAGATE["TOPIC_PAGE_SIZE"])


class Topic(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="topics")
    name = models.CharField(max_length=64, validators=[SLUG_VALIDATOR])
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.GLOBAL)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_topics",
    )
    page_size = models.PositiveIntegerField(
        default=default_page_size, help_text="Largest batch a subscriber is sent at once."
    )
    retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Trim messages older than this; empty keeps them."
    )
    retention_count = models.PositiveIntegerField(
        null=True, blank=True, help_text="Keep at most this many messages; empty keeps all."
    )
    last_offset = models.BigIntegerField(
        default=0, help_text="The offset counter: offset of the latest message."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=Q(scope="global"),
                name="topic_tenant_global_name",
            ),
            models.UniqueConstraint(
                fields=["tenant", "owner", "name"],
                condition=Q(scope="local"),
                name="topic_tenant_owner_local_name",
            ),
        ]
        ordering = ["tenant__slug", "name"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name}"


class Message(models.Model):
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="messages")
    offset = models.BigIntegerField()
    message_id = models.CharField(max_length=MESSAGE_ID_MAX_LENGTH)
    payload = models.JSONField(null=True, blank=True)
    publisher = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    device = models.CharField(max_length=DEVICE_MAX_LENGTH, blank=True)
    published_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "offset"], name="message_topic_offset"),
            models.UniqueConstraint(fields=["topic", "message_id"], name="message_topic_id"),
        ]
        indexes = [models.Index(fields=["topic", "published_at"], name="message_topic_published")]

    def __str__(self) -> str:
        return f"#{self.offset} {self.message_id}"


class ConsumerOffset(models.Model):
    """How far one device of one user got in a topic: the last offset it committed."""

    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="consumer_offsets")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="topic_offsets"
    )
    device = models.CharField(max_length=DEVICE_MAX_LENGTH)
    committed = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["topic", "user", "device"], name="consumer_offset_topic_user_device"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.device}: {self.committed}"
