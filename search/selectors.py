"""Full-text search reads: ranked hits with highlights, on SQLite FTS5 or PostgreSQL.

Both engines get the same query language: the words of the query, all of which must match
(stemmed, case- and accent-insensitive). Scores are the engine's own (FTS5's bm25 negated,
PostgreSQL's ts_rank): higher is better, comparable only within one result list.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection

from core.errors import DataGateError, ErrorCode
from replication.changes import Version, version_to_wire
from replication.models import Collection, Document
from replication.protocol.conflicts import WRITE
from search.models import SearchIndex

MARK_START = "<mark>"
MARK_END = "</mark>"
MAX_TERMS = 32
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class SearchHit:
    doc_id: str
    score: float
    highlight: str
    document: dict[str, Any]


def search_enabled(*, collection_id: int) -> bool:
    return SearchIndex.objects.filter(collection_id=collection_id).exclude(fields=[]).exists()


def query_terms(query: str) -> list[str]:
    """The words of a user's query, or DG-8003 if there are none (or too many)."""
    terms = WORD.findall(query or "")
    if not terms:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="q", detail="no words to search for")
    if len(terms) > MAX_TERMS:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="q", detail=f"at most {MAX_TERMS} words")
    return terms


def _sqlite_hits(
    collection_id: int, terms: list[str], limit: int, offset: int
) -> list[tuple[str, float, str]]:
    # Each word quoted: FTS5 treats it as a plain token (no operators), all must match.
    match = " ".join(f'"{term}"' for term in terms)
    sql = (
        "SELECT e.doc_id, -bm25(search_fts) AS score, "
        "snippet(search_fts, 0, %s, %s, '…', 24) "
        "FROM search_fts JOIN search_searchentry e ON e.id = search_fts.rowid "
        "WHERE search_fts MATCH %s AND e.collection_id = %s "
        "ORDER BY score DESC, e.doc_id LIMIT %s OFFSET %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [MARK_START, MARK_END, match, collection_id, limit, offset])
        return [(row[0], float(row[1]), row[2]) for row in cursor.fetchall()]


def _postgres_hits(
    collection_id: int, terms: list[str], limit: int, offset: int
) -> list[tuple[str, float, str]]:
    options = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=30, MinWords=10"
    sql = (
        "SELECT e.doc_id, ts_rank(e.vector, q) AS score, "
        "ts_headline('english', e.text, q, %s) "
        "FROM search_searchentry e, plainto_tsquery('english', %s) q "
        "WHERE e.collection_id = %s AND e.vector @@ q "
        "ORDER BY score DESC, e.doc_id LIMIT %s OFFSET %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [options, " ".join(terms), collection_id, limit, offset])
        return [(row[0], float(row[1]), row[2]) for row in cursor.fetchall()]


def search_documents(
    *,
    collection_id: int,
    query: str,
    limit: int = 20,
    offset: int = 0,
    read_filter: Callable[[str], bool] | None = None,
) -> list[SearchHit]:
    """The collection's live documents matching `query`, best first, with a highlighted snippet.

    `read_filter` (from `accounts.access.document_read_filter`) drops ids the reader may not
    see. Raises DG-8007 when the collection has no search index.
    """
    if not search_enabled(collection_id=collection_id):
        collection = Collection.objects.select_related("tenant").get(pk=collection_id)
        raise DataGateError(
            ErrorCode.SEARCH_NOT_ENABLED,
            tenant=collection.tenant.slug,
            collection=collection.name,
        )
    terms = query_terms(query)
    finder = _postgres_hits if connection.vendor == "postgresql" else _sqlite_hits
    rows = finder(collection_id, terms, limit, offset)
    if read_filter is not None:
        rows = [row for row in rows if read_filter(row[0])]
    documents = {
        d.doc_id: d
        for d in Document.objects.filter(
            collection_id=collection_id, doc_id__in=[row[0] for row in rows]
        )
    }
    hits: list[SearchHit] = []
    for doc_id, score, highlight in rows:
        doc = documents.get(doc_id)
        if doc is None:
            continue
        version = Version(doc.doc_id, WRITE, doc.modified, doc.revision, doc.origin, doc.body)
        hits.append(SearchHit(doc_id, score, highlight, version_to_wire(version)))
    return hits
