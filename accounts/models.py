"""Tenants and who belongs to them.

A tenant is the unit an operator hosts: its collections and topics belong to it, and users
hold a role in it. `accounts` owns tenants (not `replication`) so that access decisions never
need to import the sync engine (docs/decisions/0001-accounts-owns-tenants.md).
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

SLUG_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    "Use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


class Tenant(models.Model):
    slug = models.CharField(max_length=64, unique=True, validators=[SLUG_VALIDATOR])
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    WRITER = "writer", "Writer"
    READER = "reader", "Reader (read-only)"


class Membership(models.Model):
    """A user's role in a tenant."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.READER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_user_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.tenant}"


class RuleEffect(models.TextChoices):
    ALLOW = "allow", "Allow"
    DENY = "deny", "Deny"


class KeyRule(models.Model):
    """A key-level rule: allow or deny reading, writing or deleting the ids matching a glob.

    A rule belongs to a collection by name within its tenant (not by foreign key: `accounts`
    does not import `replication`), so rules can be written before the collection exists.
    It applies to one user, one group, or (neither set) every user. `{username}` in the
    pattern is replaced by the asking user's name. Rules are evaluated in `position` order and
    the first that matches decides (accounts/access.py explains the whole order).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="key_rules")
    collection_name = models.CharField(max_length=64, validators=[SLUG_VALIDATOR])
    position = models.IntegerField(
        default=100, help_text="Rules are tried in ascending position; the first match decides."
    )
    pattern = models.CharField(
        max_length=200,
        help_text="Glob on document ids: * (any characters, / included), ?, [abc]; "
        "{username} is the asking user's name. Example: user-{username}/*",
    )
    effect = models.CharField(max_length=8, choices=RuleEffect.choices)
    for_read = models.BooleanField(default=False, help_text="The rule applies to reading.")
    for_write = models.BooleanField(default=False, help_text="The rule applies to writing.")
    for_delete = models.BooleanField(default=False, help_text="The rule applies to deleting.")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="key_rules",
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="key_rules"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tenant__slug", "collection_name", "position", "id"]
        indexes = [models.Index(fields=["tenant", "collection_name"], name="keyrule_collection")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=True) | models.Q(group__isnull=True),
                name="keyrule_user_or_group",
            )
        ]

    def __str__(self) -> str:
        actions = ",".join(self.actions) or "-"
        return f"#{self.position} {self.effect} {actions} {self.pattern} to {self.subject}"

    @property
    def actions(self) -> list[str]:
        return [a for a in ("read", "write", "delete") if getattr(self, f"for_{a}")]

    @property
    def subject(self) -> str:
        if self.user_id is not None:
            return f"user {self.user}"
        if self.group_id is not None:
            return f"group {self.group}"
        return "everyone"


class AccessMarker(models.Model):
    """How far the inputs of access decisions have moved, one row per scope.

    The row `*` counts every change; the other rows (`user:7`, `collection:3/notes`, ...) hold
    the count at their own latest change. accounts/access_changes.py explains the scheme.
    """

    scope = models.CharField(max_length=128, primary_key=True)
    version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.scope} at {self.version}"


class AuditEntry(models.Model):
    """One operator action: who did what, when, to which object (accounts/audit.py writes it).

    The services write it, in the transaction of the action, when they are called with an
    actor (the console passes the signed-in user, the commands `System("command ...")`).
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The user who acted (empty for the server itself or a deleted user).",
    )
    actor_name = models.CharField(max_length=150, help_text="User name, or `system: purpose`.")
    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    tenant_slug = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, help_text="`token.revoke`, `collection.create`, …")
    target = models.CharField(max_length=300, help_text="The object acted on, in words.")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["tenant", "-at"], name="audit_tenant_at")]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target}"
