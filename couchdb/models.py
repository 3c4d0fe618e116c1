"""What the CouchDB door keeps beside the store: revision histories and `_local` documents.

Documents, tombstones, seqs and the journal are the store's own (replication/models.py); a
CouchDB "database" is a collection. `RevisionHistory` holds the CouchDB revision ids of one
document (couchdb/revs.py explains them); `LocalDocument` holds the replication checkpoints
PouchDB writes under `_local/`, which never replicate and never reach websocket replicas.
"""

from __future__ import annotations

from django.db import models

from replication.models import ID_MAX_LENGTH, Collection


class RevisionHistory(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="+")
    doc_id = models.CharField(max_length=ID_MAX_LENGTH)
    seq = models.BigIntegerField(help_text="seq of the stored version this history describes")
    revs = models.JSONField(default=list, help_text="the winning path, newest first")
    closed = models.JSONField(default=list, help_text="closed (lost) branches, newest first")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "doc_id"], name="couchdb_history_collection_id"
            )
        ]

    def __str__(self) -> str:
        return f"{self.doc_id} {self.revs[:1]}"


class LocalDocument(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="+")
    doc_id = models.CharField(max_length=ID_MAX_LENGTH)
    rev = models.CharField(max_length=64)
    body = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["collection", "doc_id"], name="couchdb_local_collection_id"
            )
        ]

    def __str__(self) -> str:
        return f"_local/{self.doc_id}"
