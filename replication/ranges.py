"""The server's range summaries: kept in every write's transaction, read by range checks.

`RangeBucket` holds, per collection and bucket of the id-hash space, the number of documents
and tombstones and the XOR of their version hashes (replication/protocol/ranges.py). Writers
call `bucket_deltas_apply` with what changed, inside their transaction and under the
collection's row lock, which already serialises the collection's writers:

- batch_apply knows each changed id's stored version (it read it for the conflict rule) and
  its new one, so a batch's deltas cost two hashes per id and one upsert statement, and no
  extra read (bench/RESULTS.md measures the cost);
- GC XORs out the tombstones it deletes; an import rebuilds the collection's rows.

`ranges_recompute` recomputes a collection's summaries from its rows: the property tests
compare it with the incremental ones, `datagate_verify` reports any difference (DG-7107) and
`datagate_ranges_rebuild` repairs it.

Reads for a range check: `ranges_table` is the stored rows, or, for a user whose key rules
hide some documents, summaries computed on the fly from the ids that user may read, up to
`RANGES_FILTERED_MAX_ROWS` rows (DG-2030 above it). `range_headers` lists the versions held in
some ranges: one scan of the collection's ids, whatever the number of ranges asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from hashlib import blake2b
from typing import Any
from zlib import crc32

from django.db import connection, transaction
from django.utils import timezone

from core.errors import DataGateError, ErrorCode
from replication.models import Collection, Document, RangeBucket, Replica, Tombstone
from replication.protocol.ranges import (
    BUCKET_SHIFT,
    BUCKETS,
    EQUAL,
    GROUP_SHIFT,
    HEADERS,
    VERSION_TAIL,
    Ask,
    BucketTable,
    Header,
    Summary,
    answer_plan,
    answer_to_wire,
    bucket_of,
    plan_needs_buckets,
    to_signed,
    to_unsigned,
    version_hash,
)

# A user with key rules gets summaries computed from the rows: at most this many.
RANGES_FILTERED_MAX_ROWS = 200_000

# Deltas of one write: bucket -> (count delta, XOR delta), unsigned.
Deltas = dict[int, tuple[int, int]]


def deltas_add(deltas: Deltas, bucket: int, count: int, xor: int) -> None:
    held = deltas.get(bucket)
    if held is None:
        deltas[bucket] = (count, xor)
    else:
        deltas[bucket] = (held[0] + count, held[1] ^ xor)


def bucket_deltas_apply(collection_id: int, deltas: Mapping[int, tuple[int, int]]) -> None:
    """Add count deltas and XOR hash deltas into the collection's bucket rows: one statement
    (a multi-row upsert; on PostgreSQL over arrays). Call inside the writer's transaction."""
    rows = [
        (collection_id, bucket, count, to_signed(xor))
        for bucket, (count, xor) in sorted(deltas.items())
        if count or xor
    ]
    if not rows:
        return
    quote = connection.ops.quote_name
    table = quote(RangeBucket._meta.db_table)
    count_col, hash_col = quote("count"), quote("hash")
    insert = (
        f"INSERT INTO {table} ({quote('collection_id')}, {quote('bucket')}, "
        f"{count_col}, {hash_col})"
    )
    # XOR as (a | b) - (a & b): SQLite has no XOR operator, and on signed 64-bit values this
    # never overflows (a & b is a subset of the bits of a | b).
    upsert = (
        f" ON CONFLICT ({quote('collection_id')}, {quote('bucket')}) DO UPDATE SET "
        f"{count_col} = {table}.{count_col} + EXCLUDED.{count_col}, "
        f"{hash_col} = ({table}.{hash_col} | EXCLUDED.{hash_col}) "
        f"- ({table}.{hash_col} & EXCLUDED.{hash_col})"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            columns = [list(column) for column in zip(*rows, strict=True)]
            cursor.execute(
                f"{insert} SELECT * FROM unnest(%s::integer[], %s::integer[], "  # noqa: S608
                f"%s::bigint[], %s::bigint[]){upsert}",
                columns,
            )
        else:
            per_statement = max(1, (connection.features.max_query_params or 999) // 4)
            for start in range(0, len(rows), per_statement):
                batch = rows[start : start + per_statement]
                marks = ", ".join(["(%s, %s, %s, %s)"] * len(batch))
                cursor.execute(
                    f"{insert} VALUES {marks}{upsert}",
                    [value for row in batch for value in row],
                )


# --- full scans -----------------------------------------------------------------------------


def _held_batches(collection_id: int) -> Iterator[tuple[list[tuple[str, int, int]], bool]]:
    """Every document and tombstone of the collection, as batches of plain rows
    `(id, revision, modified)` with whether they are tombstones. Plain tuples, not objects:
    a repair's round reads the whole collection (100,000 rows in about 0.1 s here)."""
    quote = connection.ops.quote_name
    queries = (
        (Document._meta.db_table, "modified", False),
        (Tombstone._meta.db_table, "deleted_at", True),
    )
    with connection.cursor() as cursor:
        for table, stamp, deleted in queries:
            # Only quoted names of our own tables and columns go into the text.
            cursor.execute(
                f"SELECT {quote('doc_id')}, {quote('revision')}, {quote(stamp)} "  # noqa: S608
                f"FROM {quote(table)} WHERE {quote('collection_id')} = %s",
                [collection_id],
            )
            while rows := cursor.fetchmany(5000):
                yield rows, deleted


def _table_of_rows(
    collection_id: int, read_filter: Callable[[str], bool] | None, cap: int | None = None
) -> BucketTable:
    """Per-bucket summaries computed from the rows (those `read_filter` lets through, at
    most `cap` of them, else DG-2030). Hashing written out flat: it runs for every row."""
    counts = [0] * BUCKETS
    hashes = [0] * BUCKETS
    seen = 0
    from_bytes = int.from_bytes
    for rows, deleted in _held_batches(collection_id):
        seen += len(rows)
        if cap is not None and seen > cap:
            raise DataGateError(ErrorCode.RANGES_TOO_LARGE, limit=cap)
        for doc_id, revision, modified in rows:
            if read_filter is not None and not read_filter(doc_id):
                continue
            key = doc_id.encode()
            bucket = crc32(key) >> BUCKET_SHIFT
            tail = VERSION_TAIL(0 if deleted else revision, modified, deleted)
            counts[bucket] += 1
            hashes[bucket] ^= from_bytes(blake2b(key + tail, digest_size=8).digest(), "big")
    return BucketTable({b: Summary(counts[b], hashes[b]) for b in range(BUCKETS) if counts[b]})


def ranges_recompute(collection_id: int) -> BucketTable:
    """The collection's per-bucket summaries computed from its rows."""
    return _table_of_rows(collection_id, None)


def ranges_stored(collection_id: int) -> BucketTable:
    """The collection's summaries as stored: groups of 64 buckets (empty ones left out)."""
    rows = RangeBucket.objects.filter(collection_id=collection_id, count__gt=0).values_list(
        "bucket", "count", "hash"
    )
    return BucketTable({b: Summary(c, to_unsigned(h)) for b, c, h in rows}, GROUP_SHIFT)


def ranges_rebuild(*, collection_id: int) -> int:
    """Recompute a collection's summaries from its rows and store them; returns the number
    of buckets that were wrong. Takes the collection's lock, like a write."""
    with transaction.atomic():
        Collection.objects.select_for_update().only("id").get(pk=collection_id)
        fresh = ranges_recompute(collection_id).grouped(GROUP_SHIFT)
        stored = ranges_stored(collection_id)
        wrong = sum(
            1
            for bucket in set(fresh.buckets) | set(stored.buckets)
            if fresh.buckets.get(bucket) != stored.buckets.get(bucket)
        )
        _replace(collection_id, fresh)
    return wrong


def ranges_replace_from(*, collection_id: int, headers: Sequence[Header]) -> None:
    """Store the summaries of exactly these versions (an import that just wrote them)."""
    _replace(collection_id, BucketTable.of(headers).grouped(GROUP_SHIFT))


def _replace(collection_id: int, table: BucketTable) -> None:
    RangeBucket.objects.filter(collection_id=collection_id).delete()
    RangeBucket.objects.bulk_create(
        [
            RangeBucket(
                collection_id=collection_id,
                bucket=bucket,
                count=summary.count,
                hash=to_signed(summary.hash),
            )
            for bucket, summary in sorted(table.buckets.items())
        ],
        batch_size=500,
    )


def ranges_mismatches(collection_id: int) -> list[tuple[int, Summary, Summary]]:
    """Stored groups whose summary differs from a recomputation: (group, stored, actual)."""
    fresh = ranges_recompute(collection_id).grouped(GROUP_SHIFT)
    stored = ranges_stored(collection_id)
    return [
        (bucket, stored.buckets.get(bucket, Summary()), fresh.buckets.get(bucket, Summary()))
        for bucket in sorted(set(fresh.buckets) | set(stored.buckets))
        if fresh.buckets.get(bucket) != stored.buckets.get(bucket)
    ]


# --- reads for a range check ------------------------------------------------------------------


def ranges_table(*, collection_id: int, read_filter: Callable[[str], bool] | None) -> BucketTable:
    """The summaries a user's range check compares with: the stored rows, or (key rules hide
    documents from this user) summaries of what the user may read, computed on the fly."""
    if read_filter is None:
        return ranges_stored(collection_id)
    return _table_of_rows(collection_id, read_filter, RANGES_FILTERED_MAX_ROWS)


def range_headers(
    *,
    collection_id: int,
    ranges: Sequence[tuple[int, int]],
    read_filter: Callable[[str], bool] | None,
) -> dict[tuple[int, int], list[Header]]:
    """The versions held in each of `ranges` that the user may read, in id order."""
    found: dict[tuple[int, int], list[Header]] = {r: [] for r in ranges}
    if not ranges:
        return found
    owner: list[list[Header] | None] = [None] * BUCKETS  # bucket -> its range's list
    for lo, hi in ranges:
        for bucket in range(lo, hi):
            owner[bucket] = found[(lo, hi)]
    for rows, deleted in _held_batches(collection_id):
        for doc_id, revision, modified in rows:
            headers = owner[crc32(doc_id.encode()) >> BUCKET_SHIFT]
            if headers is None or (read_filter is not None and not read_filter(doc_id)):
                continue
            headers.append(Header(doc_id, revision, modified, deleted))
    for headers in found.values():
        headers.sort(key=lambda h: h.doc_id)
    return found


def version_delta(
    deltas: Deltas,
    doc_id: str,
    old: tuple[int, int, bool] | None,
    new: tuple[int, int, bool] | None,
) -> None:
    """Record that `doc_id` went from `old` to `new` ((revision, modified, deleted) or None)."""
    xor = 0
    count = 0
    if old is not None:
        xor ^= version_hash(doc_id, *old)
        count -= 1
    if new is not None:
        xor ^= version_hash(doc_id, *new)
        count += 1
    deltas_add(deltas, bucket_of(doc_id) >> GROUP_SHIFT, count, xor)


def range_answer(
    *,
    collection_id: int,
    read_filter: Callable[[str], bool] | None,
    asks: Sequence[Ask],
    buckets: BucketTable | None = None,
) -> tuple[dict[str, Any], BucketTable | None]:
    """The body of a range.result (docs/protocol.md, "Ranges"), and the per-bucket table
    it used, if it needed one: the caller (a session) passes it back as `buckets` for its
    next rounds, so a session scans the collection for summaries once at most.

    `markers` is the collection's position read before the summaries: everything committed
    up to it is in them, so a client that repairs its differences and then pulls from these
    markers has every change (one committed in between may come twice, which changes nothing).
    """
    last_seq, epoch = (
        Collection.objects.filter(pk=collection_id).values_list("last_seq", "epoch").get()
    )
    table = buckets
    if table is None:
        table = ranges_table(collection_id=collection_id, read_filter=read_filter)
        if plan_needs_buckets(table, asks):
            table = ranges_recompute(collection_id)
        buckets = table if table.shift == 0 else None
    plan = answer_plan(table, asks)
    leaves = [(a.ask.lo, a.ask.hi) for a in plan if a.status == HEADERS]
    headers = range_headers(collection_id=collection_id, ranges=leaves, read_filter=read_filter)
    ranges = [
        answer_to_wire(a, headers.get((a.ask.lo, a.ask.hi), ()) if a.status == HEADERS else ())
        for a in plan
    ]
    body = {
        "markers": {"collectionMarker": int(last_seq), "tombstoneMarker": int(epoch)},
        "ranges": ranges,
        "equal": all(a.status == EQUAL for a in plan),
    }
    return body, buckets


def range_fetch(
    *, collection_id: int, read_filter: Callable[[str], bool] | None, ids: Sequence[str]
) -> dict[str, Any]:
    """The body of a range.docs: the held version of each id the user may read, as a feed;
    the ids the server does not hold (or the user may not read) as `missing`."""
    wanted = [i for i in dict.fromkeys(ids) if read_filter is None or read_filter(i)]
    change_set: list[dict[str, Any]] = []
    tombstone_map: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        batch = wanted[start : start + 500]
        documents = Document.objects.filter(collection_id=collection_id, doc_id__in=batch)
        for doc_id, body, revision, modified, origin in documents.values_list(
            "doc_id", "body", "revision", "modified", "origin"
        ):
            change_set.append(
                {
                    **(body or {}),
                    "_id": doc_id,
                    "_revision": revision,
                    "_modified": modified,
                    "_origin": origin,
                }
            )
        tombstones = Tombstone.objects.filter(collection_id=collection_id, doc_id__in=batch)
        tombstone_map.update(tombstones.values_list("doc_id", "deleted_at"))
    found = {doc["_id"] for doc in change_set} | set(tombstone_map)
    return {
        "feed": {"changeSet": change_set, "tombstoneMap": tombstone_map},
        "missing": [i for i in dict.fromkeys(ids) if i not in found],
    }


def range_check_answer(
    *,
    collection_id: int,
    replica_pk: int,
    read_filter: Callable[[str], bool] | None,
    asks: Sequence[Ask],
    buckets: BucketTable | None = None,
) -> tuple[dict[str, Any], BucketTable | None]:
    """A session's range.result (see `range_answer`); a check of the whole id space found
    equal is recorded as the replica's `verified_at` (the console shows it)."""
    body, buckets = range_answer(
        collection_id=collection_id, read_filter=read_filter, asks=asks, buckets=buckets
    )
    if body["equal"] and any(a.lo == 0 and a.hi == BUCKETS for a in asks):
        Replica.objects.filter(pk=replica_pk).update(verified_at=timezone.now())
    return body, buckets
