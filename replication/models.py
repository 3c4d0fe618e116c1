"""The storage engine's tables: collections, documents, tombstones, the journal, replicas.

A collection's `last_seq` is the counter every change draws its sequence number from, inside
the transaction that writes the change (services.batch_apply), so sequence numbers become
visible in order and without gaps. A document id lives either in `Document` or in
`Tombstone`, never both; each row carries the seq of the id's latest change, which is what a
pull reads (docs/protocol.md, "Pull").
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from accounts.models import SLUG_VALIDATOR, Tenant
from replication.protocol.markers import new_epoch

ID_MAX_LENGTH = 128


class Collection(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="collections")
    name = models.CharField(max_length=64, validators=[SLUG_VALIDATOR])
    last_seq = models.BigIntegerField(
        default=0, help_text="The sequence counter: seq of the latest change."
    )
    purge_seq = models.BigIntegerField(
        default=0,
        help_text="Purge horizon: tombstones with a seq at or below it may have been collected.",
    )
    purge_horizon_ms = models.BigIntegerField(
        default=0,
        help_text="Latest delete time (epoch ms) among collected tombstones: a write of an id "
        "the server does not know, stamped at or before it, is refused (DG-7001).",
    )
    journal_pruned_seq = models.BigIntegerField(
        default=0, help_text="Journal entries at or below this seq may have been pruned."
    )
    epoch = models.BigIntegerField(
        default=new_epoch,
        help_text="The collection's timeline; drawn again when restored from an export.",
    )
    tombstone_ttl_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides DATAGATE TOMBSTONE_TTL_DAYS when set."
    )
    journal_retention_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides DATAGATE JOURNAL_RETENTION_DAYS when set."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="collection_tenant_name")
        ]
        ordering = ["tenant__slug", "name"]
        # Per-collection grants through django-guardian (accounts/access.py decides with them).
        permissions = [
            ("read_collection", "Can read the collection's documents"),
            ("write_collection", "Can write and delete the collection's documents"),
            ("administer_collection", "Can administer the collection"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.name}"

    @property
    def effective_tombstone_ttl_days(self) -> int:
        if self.tombstone_ttl_days is not None:
            return self.tombstone_ttl_days
        return int(settings.DATAGATE["TOMBSTONE_TTL_DAYS"])

    @property
    def effective_journal_retention_days(self) -> int:
        if self.journal_retention_days is not None:
            return self.journal_retention_days
        return int(settings.DATAGATE["JOURNAL_RETENTION_DAYS"])


class Document(models.Model):
    """The current version of a live document. `body` holds the user's fields only."""

    # No index of its own: the unique index that starts with the collection serves it.
    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="documents", db_index=False
    )
    doc_id = models.CharField(max_length=ID_MAX_LENGTH)
    body = models.JSONField(default=dict)
    revision = models.PositiveIntegerField()
    modified = models.BigIntegerField(help_text="_modified, epoch milliseconds")
    origin = models.CharField(max_length=ID_MAX_LENGTH, blank=True)
    seq = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "doc_id"], name="document_collection_id")
        ]
        indexes = [models.Index(fields=["collection", "seq"], name="document_collection_seq")]

    def __str__(self) -> str:
        return self.doc_id


class Tombstone(models.Model):
    """A deleted document: kept so a late, older write cannot bring it back."""

    # No index of its own: the unique index that starts with the collection serves it.
    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="tombstones", db_index=False
    )
    doc_id = models.CharField(max_length=ID_MAX_LENGTH)
    deleted_at = models.BigIntegerField(help_text="delete time, epoch milliseconds")
    revision = models.PositiveIntegerField()
    origin = models.CharField(max_length=ID_MAX_LENGTH, blank=True)
    seq = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "doc_id"], name="tombstone_collection_id")
        ]
        indexes = [models.Index(fields=["collection", "seq"], name="tombstone_collection_seq")]

    def __str__(self) -> str:
        return self.doc_id


class QuarantinedDocument(models.Model):
    """A stored document that could not be served, as `datagate_quarantine` found it.

    Rows written before the document door existed (or by hand) that a frame cannot carry: a
    lone surrogate, NaN, nesting too deep, an id outside the rules. The body is kept as
    ASCII-escaped JSON text, which both backends store whatever it holds; the document itself
    was repaired or deleted through the services (docs/maintenance.md).
    """

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="quarantined")
    doc_id = models.CharField(max_length=ID_MAX_LENGTH * 8, help_text="escaped where needed")
    body_text = models.TextField(help_text="the stored body, as ASCII-escaped JSON")
    revision = models.PositiveIntegerField()
    modified = models.BigIntegerField()
    origin = models.CharField(max_length=ID_MAX_LENGTH * 8, blank=True)
    seq = models.BigIntegerField()
    reason = models.CharField(max_length=8, help_text="the door's code: DG-4002, DG-4010..4012")
    action = models.CharField(max_length=16, help_text="repaired, deleted or removed")
    quarantined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["collection", "quarantined_at"], name="quarantine_coll")]

    def __str__(self) -> str:
        return f"{self.doc_id} ({self.reason}, {self.action})"


class RangeBucket(models.Model):
    """The summary of one fixed range of the id-hash space (a group of 64 of the protocol's
    4096 buckets: `bucket` is the group's number): how many documents and tombstones it holds
    and the XOR of their version hashes (replication/protocol/ranges.py).

    Kept up to date in the transaction of every write (batch_apply, GC, import), so a range
    check reads a few rows instead of the collection. A bucket never written has no row.
    """

    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="range_buckets"
    )
    bucket = models.IntegerField()
    count = models.BigIntegerField(default=0)
    hash = models.BigIntegerField(default=0, help_text="XOR of version hashes, signed 64-bit")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "bucket"], name="rangebucket_collection_bucket"
            )
        ]

    def __str__(self) -> str:
        return f"{self.collection_id}#{self.bucket}: {self.count}"


class Operation(models.TextChoices):
    PUT = "put", "put"
    DELETE = "delete", "delete"


class JournalEntry(models.Model):
    """The append-only change journal: one row per applied change, in seq order."""

    # No index of its own: the unique index that starts with the collection serves it.
    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="journal", db_index=False
    )
    seq = models.BigIntegerField()
    operation = models.CharField(max_length=8, choices=Operation.choices)
    doc_id = models.CharField(max_length=ID_MAX_LENGTH)
    revision = models.PositiveIntegerField()
    modified = models.BigIntegerField()
    origin = models.CharField(max_length=ID_MAX_LENGTH, blank=True)
    replica = models.ForeignKey(
        "Replica", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "seq"], name="journal_collection_seq")
        ]
        indexes = [
            models.Index(fields=["collection", "doc_id"], name="journal_collection_doc"),
            models.Index(fields=["created_at"], name="journal_created"),
        ]
        verbose_name_plural = "journal entries"

    def __str__(self) -> str:
        return f"#{self.seq} {self.operation} {self.doc_id}"


class Replica(models.Model):
    """A replica (a device's local database) known to a collection, and how far it got."""

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="replicas")
    replica_id = models.CharField(max_length=ID_MAX_LENGTH, help_text="the client's `origin`")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="replicas"
    )
    name = models.CharField(max_length=200, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(auto_now=True)
    online = models.BooleanField(default=False)
    last_pushed_seq = models.BigIntegerField(
        default=0, help_text="server seq of the last change this replica pushed"
    )
    last_acked_seq = models.BigIntegerField(
        default=0, help_text="server marker this replica last acknowledged"
    )
    pushed_count = models.BigIntegerField(default=0)
    pulled_count = models.BigIntegerField(default=0)
    rejected_count = models.BigIntegerField(default=0)
    sessions_count = models.BigIntegerField(default=0)
    client_version = models.CharField(max_length=100, blank=True)
    address = models.CharField(max_length=100, blank=True)
    verified_at = models.DateTimeField(
        null=True, blank=True, help_text="when a range check last found this replica equal"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "user", "replica_id"], name="replica_collection_user_id"
            )
        ]
        indexes = [models.Index(fields=["online", "last_seen"], name="replica_online_seen")]

    def __str__(self) -> str:
        return f"{self.replica_id} ({self.user})"


class ErrorEvent(models.Model):
    """Every error DataGate reported to someone, for the console and for operators."""

    code = models.CharField(max_length=8)
    text = models.CharField(max_length=200)
    fatal = models.BooleanField(default=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    replica = models.ForeignKey(
        Replica, null=True, blank=True, on_delete=models.SET_NULL, related_name="errors"
    )
    tenant = models.CharField(max_length=64, blank=True)
    collection = models.CharField(max_length=64, blank=True)
    context = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["created_at"], name="errorevent_created"),
            models.Index(fields=["code", "created_at"], name="errorevent_code_created"),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.text


class ReplicaSession(models.Model):
    """One connection of a replica, from Connect to its end: the console's session history."""

    replica = models.ForeignKey(Replica, on_delete=models.CASCADE, related_name="sessions")
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    address = models.CharField(max_length=100, blank=True)
    client_version = models.CharField(max_length=100, blank=True)

    class Meta:
        indexes = [models.Index(fields=["replica", "-started_at"], name="replicasession_replica")]
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.replica_id} session at {self.started_at:%Y-%m-%d %H:%M:%S}"


class FeedLatencyMinute(models.Model):
    """Feed latency (feed sent to feed.ack received) per collection and minute, for the console.

    One row per collection and minute, so recording is one small upsert however many replicas
    ack, and the console's last-hour chart reads at most 60 rows per collection.
    """

    collection = models.ForeignKey(
        Collection, on_delete=models.CASCADE, related_name="feed_latency"
    )
    minute = models.DateTimeField()
    acks = models.BigIntegerField(default=0)
    total_ms = models.BigIntegerField(default=0)
    max_ms = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "minute"], name="feedlatency_collection_minute"
            )
        ]

    def __str__(self) -> str:
        return f"{self.collection_id} {self.minute:%H:%M}: {self.acks} acks"


class MaintenanceJob(models.TextChoices):
    GC = "gc", "tombstone GC"
    JOURNAL_PRUNE = "journal_prune", "journal pruning"
    IMPORT = "import", "collection import"


class MaintenanceRun(models.Model):
    """One run of a maintenance job (replication/maintenance.py), for the console and operators."""

    job = models.CharField(max_length=32, choices=MaintenanceJob.choices)
    trigger = models.CharField(max_length=16, help_text="schedule or command")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    summary = models.CharField(max_length=300, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["job", "started_at"], name="maintenancerun_job_started")]
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.job} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class DataView(models.Model):
    """A named view of a collection: a Mango selector, projected fields, session parameters.

    replication/protocol/mango.py parses and evaluates the selector; replication/data_views.py
    manages views and reads through them. `version` moves on every change of the definition;
    `history` keeps the last definitions before it (`{"version", "selector", "fields"}`, oldest
    first, at most `data_views.HISTORY_KEPT`), so that a replica synced through one of them is
    re-synced by difference, not from zero (docs/decisions/0016).
    """

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="views")
    name = models.CharField(max_length=64, validators=[SLUG_VALIDATOR])
    selector = models.JSONField(default=dict)
    fields = models.JSONField(default=list, blank=True)
    description = models.CharField(max_length=300, blank=True)
    version = models.PositiveIntegerField(default=1)
    history = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "name"], name="dataview_collection_name")
        ]
        ordering = ["collection_id", "name"]

    def __str__(self) -> str:
        return f"{self.collection}/{self.name}"
