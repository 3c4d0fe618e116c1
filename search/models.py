"""Full-text search over documents: which fields a collection indexes, and the index rows.

`SearchIndex` is the operator's choice of fields per collection (editable in the console).
`SearchEntry` holds one row per indexed live document: the text of its chosen fields. The
vendor-specific full-text structure sits beside it, created by migration 0002: on SQLite an
FTS5 table kept in step by triggers (rowid = entry id), on PostgreSQL a generated `tsvector`
column with a GIN index. `search.services.search_index_apply` keeps entries in step with every
write and delete, inside `replication.services.engine.batch_apply`'s transaction.
"""

from __future__ import annotations

from django.db import models

from replication.models import ID_MAX_LENGTH, Collection


class SearchIndex(models.Model):
    collection = models.OneToOneField(
        Collection, on_delete=models.CASCADE, related_name="search_index"
    )
    fields = models.JSONField(
        default=list,
        help_text=(
            'Document fields to index, as a JSON list of names, e.g. ["title", "body"]. '
            "A dotted name reaches into nested objects (author.name)."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "search indexes"

    def __str__(self) -> str:
        return f"search index of {self.collection}"


class SearchEntry(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="+")
    doc_id = models.CharField(max_length=ID_MAX_LENGTH)
    text = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["collection", "doc_id"], name="searchentry_doc")
        ]
        verbose_name_plural = "search entries"

    def __str__(self) -> str:
        return self.doc_id
