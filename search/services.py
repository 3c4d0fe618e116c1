"""Writes of the search index: configuring a collection's fields, and keeping entries in step.

`search_index_apply` is called by the write engine (`replication.services.engine.batch_apply`)
inside its transaction, for every chunk that changed documents, so the index moves with every
write and delete, whoever made it (a replica's push, a live feed, the HTTP API, the console).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connection, transaction

from replication.models import Collection, Document
from replication.rows import column, json_value, table
from search.models import SearchEntry, SearchIndex

FIELD_PATTERN = re.compile(r"^[^._\s][^.\s]*(\.[^.\s]+)*$")
MAX_FIELDS = 32
REBUILD_BATCH = 500


def fields_validate(fields: object) -> list[str]:
    """The field list, or ValueError saying what is wrong with it."""
    if not isinstance(fields, list) or not fields:
        raise ValueError("choose at least one field, as a list of names")
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields")
    cleaned: list[str] = []
    for name in fields:
        if not isinstance(name, str) or len(name) > 200 or not FIELD_PATTERN.match(name):
            raise ValueError(f"{name!r} is not a field name (letters, dots between parts)")
        if name not in cleaned:
            cleaned.append(name)
    return cleaned


def _values(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, list):
        for item in value:
            yield from _values(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _values(item)


def indexed_text(body: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The text a document contributes to the index: its chosen fields' values, one a line."""
    lines: list[str] = []
    for name in fields:
        value: Any = body
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        lines.extend(v for v in _values(value) if v.strip())
    return "\n".join(lines)


@functools.lru_cache(maxsize=4)
def _index_fields_select(vendor: str) -> str:
    return (
        f"SELECT {column(SearchIndex, 'fields')} FROM {table(SearchIndex)} "  # noqa: S608
        f"WHERE {column(SearchIndex, 'collection')} = %s"
    )


def search_index_apply(
    *,
    collection_id: int,
    upserts: Sequence[tuple[str, Mapping[str, Any]]],
    deletes: Sequence[str],
) -> None:
    """Bring the collection's index in step with written and deleted documents.

    `upserts` are the written documents as (doc_id, body) pairs, `body` holding the user's
    fields as stored (batch_apply writes rows of plain values, not `Document` instances);
    `deletes` are the ids of documents that became tombstones.
    """
    # One index per collection (a one-to-one field), read with a plain statement: the
    # queryset the ORM compiled on every write was 3-5% of a pushing server's CPU (issue 21).
    with connection.cursor() as cursor:
        cursor.execute(_index_fields_select(connection.vendor), [collection_id])
        found = cursor.fetchone()
    fields = json_value(found[0]) if found else None
    if not fields:
        return
    rows: list[SearchEntry] = []
    emptied: list[str] = list(deletes)
    for doc_id, body in upserts:
        text = indexed_text(body, fields)
        if text:
            rows.append(SearchEntry(collection_id=collection_id, doc_id=doc_id, text=text))
        else:
            emptied.append(doc_id)
    for start in range(0, len(emptied), REBUILD_BATCH):
        SearchEntry.objects.filter(
            collection_id=collection_id, doc_id__in=emptied[start : start + REBUILD_BATCH]
        ).delete()
    if rows:
        SearchEntry.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["collection", "doc_id"],
            update_fields=["text"],
        )


def search_index_rebuild(*, collection_id: int) -> int:
    """Index the collection's documents afresh; returns how many entries it holds."""
    with transaction.atomic():
        # Hold the collection's write lock, so no write slips between the scan and the commit.
        Collection.objects.select_for_update().only("id").get(pk=collection_id)
        SearchEntry.objects.filter(collection_id=collection_id).delete()
        fields = (
            SearchIndex.objects.filter(collection_id=collection_id)
            .values_list("fields", flat=True)
            .first()
        )
        if not fields:
            return 0
        count = 0
        batch: list[SearchEntry] = []
        documents = Document.objects.filter(collection_id=collection_id).only("doc_id", "body")
        for doc in documents.order_by("pk").iterator(chunk_size=REBUILD_BATCH):
            text = indexed_text(doc.body or {}, fields)
            if text:
                batch.append(SearchEntry(collection_id=collection_id, doc_id=doc.doc_id, text=text))
            if len(batch) >= REBUILD_BATCH:
                SearchEntry.objects.bulk_create(batch)
                count += len(batch)
                batch = []
        SearchEntry.objects.bulk_create(batch)
        return count + len(batch)


def search_index_configure(*, collection_id: int, fields: object) -> SearchIndex:
    """Choose the fields a collection indexes (ValueError if they are malformed), then rebuild."""
    cleaned = fields_validate(fields)
    with transaction.atomic():
        index, _ = SearchIndex.objects.update_or_create(
            collection_id=collection_id, defaults={"fields": cleaned}
        )
        search_index_rebuild(collection_id=collection_id)
    return index


def search_index_remove(*, collection_id: int) -> None:
    """Stop indexing a collection and drop its entries."""
    with transaction.atomic():
        SearchIndex.objects.filter(collection_id=collection_id).delete()
        SearchEntry.objects.filter(collection_id=collection_id).delete()
