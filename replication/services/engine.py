"""The write engine: every change to a collection's documents, and the SQL it takes.

`batch_apply` and `batch_apply_many` apply chunks of changes (PROTOCOL.md sections 4 and 5)
atomically and idempotently: each change gets a sequence number, lands in the journal, keeps
the range summaries in step, runs the write hooks (the search index, registered by
search/apps.py: replication imports no search) and rings the doorbell after commit. Every
interface writes through here: the websocket session (`services.sessions`), single documents
(`services.documents`: the console, the HTTP API, GraphQL, commands), CouchDB, imports.

Every write names its `actor`, a required argument: the user it is made for, or
`accounts.access.System("purpose")` for an internal job that acts for no user. A user's
changes pass the same access decision whoever calls (`accounts.access.document_policy`: the
collection-level write right, then the key rules); there is no guard a caller could forget
to pass (docs/access.md, "One door").
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, NamedTuple
from zlib import crc32

import msgspec
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from accounts import access
from accounts.access import Bearer, DocumentPolicy, System
from accounts.models import Tenant
from core.door import DoorLimits, limits_from_settings
from core.errors import DataGateError, ErrorCode
from replication.changes import (
    ParsedFeed,
    Rejection,
    Version,
    newest_per_id,
    parse_feed,
)
from replication.doorbell import ring_on_commit
from replication.models import (
    Collection,
    Document,
    JournalEntry,
    Operation,
    Tombstone,
)
from replication.protocol.conflicts import DELETE, WRITE, VersionKey, incoming_wins, version_key
from replication.protocol.ranges import STORED_SHIFT, VERSION_TAIL
from replication.ranges import Deltas, bucket_deltas_apply
from replication.rows import (
    IDS_PER_STATEMENT,
    collection_last_seq_set,
    collection_row,
    json_array_text,
    json_value,
    rows_by_ids,
)

# An IN (...) list per query: well below SQLite's and PostgreSQL's parameter limits (the
# plain-row reads of `replication.rows` use the same size).
LOOKUP_BATCH = IDS_PER_STATEMENT

# What another app keeps in step with every write, inside its transaction (the search index):
# called with collection_id, upserts as (doc_id, body) pairs and deletes as ids. Registered by
# the app itself (search/apps.py, `write_hook_register`), so replication imports no such app.
WriteHook = Callable[..., None]
_write_hooks: dict[str, WriteHook] = {}


def write_hook_register(name: str, hook: WriteHook) -> None:
    """Call `hook(collection_id=..., upserts=..., deletes=...)` in every write's transaction.
    Registering a name again replaces its hook (AppConfig.ready may run more than once)."""
    _write_hooks[name] = hook


# The per-change access check of one write: None to allow, or the error to reject it with.
ChangeCheck = Callable[[Version], DataGateError | None]

# Who a write is made for: a user (django.contrib.auth), a user through a token
# (accounts.access.Bearer: the user's access, limited to the token's scopes) or
# accounts.access.System.
Actor = Any


def acting_user(actor: Actor) -> Any:
    """The user `actor` acts for (a Bearer's user), or the System itself."""
    return actor.user if isinstance(actor, Bearer) else actor


def actor_user_id(actor: Actor) -> int | None:
    """The user id the journal records for `actor` (None for the system)."""
    user = acting_user(actor)
    if isinstance(user, System):
        return None
    if user is None or not hasattr(user, "is_authenticated"):
        raise TypeError(f"actor must be a user or accounts.access.System, not {actor!r}")
    return user.pk if user.is_authenticated else None


def actor_policy(
    *, actor: Actor, collection_id: int, policy: DocumentPolicy | None = None
) -> DocumentPolicy | None:
    """What `actor` may do with the collection's documents: None (everything) for the system;
    for a user `policy` when given (a session's, decided for this user and collection), else
    decided now through `accounts.access.document_policy`."""
    actor_user_id(actor)  # refuses anything that is neither a user nor the system
    if isinstance(actor, System):
        return None
    if policy is not None:
        return policy
    collection = Collection.objects.select_related("tenant").get(pk=collection_id)
    return access.document_policy(
        user=acting_user(actor),
        tenant=collection.tenant,
        collection_name=collection.name,
        collection=collection,
    )


def actor_refusal(
    *, actor: Actor, policy: DocumentPolicy | None, kind: int, doc_id: str
) -> DataGateError | None:
    """Why `actor` may not make this change (a write or a delete of `doc_id`), or None: a
    Bearer's token without the `write` scope (DG-1002), then the user's own right."""
    if isinstance(actor, Bearer) and not access.access_scope(scopes=actor.scopes, scope="write"):
        return DataGateError(ErrorCode.TOKEN_SCOPE, scope="write")
    if policy is None:
        return None
    if not policy.can_write:
        return DataGateError(ErrorCode.READ_ONLY, user=acting_user(actor).get_username())
    if kind == WRITE:
        if policy.may_write(doc_id):
            return None
        return DataGateError(ErrorCode.KEY_WRITE_DENIED, doc_id=doc_id)
    if policy.may_delete(doc_id):
        return None
    return DataGateError(ErrorCode.KEY_DELETE_DENIED, doc_id=doc_id)


def _door(actor: Actor, policy: DocumentPolicy | None) -> ChangeCheck:
    """The per-change check of a write: the actor's access, and nothing a caller adds."""

    def door(version: Version) -> DataGateError | None:
        return actor_refusal(actor=actor, policy=policy, kind=version.kind, doc_id=version.doc_id)

    return door


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ApplyResult:
    """What a chunk did: the receipt to send back and the seqs it used."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    applied: int = 0
    first_seq: int | None = None
    last_seq: int | None = None

    def receipt(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "rejected": [r.to_wire() for r in self.rejected],
        }


def collection_get_or_create(*, tenant: Tenant, name: str) -> tuple[Collection, bool]:
    collection = Collection.objects.filter(tenant=tenant, name=name).first()
    if collection is not None:
        return collection, False
    collection = Collection(tenant=tenant, name=name)
    collection.full_clean()
    with transaction.atomic():
        collection, created = Collection.objects.get_or_create(tenant=tenant, name=name)
    return collection, created


def _in_batches(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), LOOKUP_BATCH):
        yield ids[start : start + LOOKUP_BATCH]


class _Stored(NamedTuple):
    """What the conflict rule needs of a stored document or tombstone (`stamp` is `modified`
    or `deleted_at`). A tuple: one is made for every change a write applies, and a frozen
    dataclass took four times as long to build (issue 21)."""

    revision: int
    stamp: int
    origin: str


def _stored_state(
    collection_id: int, ids: list[str]
) -> tuple[dict[str, _Stored], dict[str, _Stored]]:
    """The stored versions of `ids` (documents, tombstones), read as plain rows: no model
    instances, no JSON bodies, which the conflict rule never looks at."""
    documents = {
        doc_id: _Stored(revision, modified, origin)
        for doc_id, revision, modified, origin in rows_by_ids(
            Document, ("doc_id", "revision", "modified", "origin"), collection_id, ids
        )
    }
    tombstones = {
        doc_id: _Stored(revision, deleted_at, origin)
        for doc_id, revision, deleted_at, origin in rows_by_ids(
            Tombstone, ("doc_id", "revision", "deleted_at", "origin"), collection_id, ids
        )
    }
    return documents, tombstones


def _behind_purge_horizon(version: Version, horizon_ms: int) -> bool:
    """True when an unknown id's version may be older than a delete GC has collected.

    GC forgets a tombstone but keeps the latest delete time it collected (the purge horizon,
    docs/maintenance.md). A version of an id the server does not hold, stamped at or before
    that time, could be the stale copy of a collected delete, so it is treated as deleted.
    """
    return horizon_ms > 0 and version.modified <= horizon_ms


def _refuse_purged(result: ApplyResult, version: Version, horizon_ms: int) -> None:
    """A write behind the horizon is rejected (DG-7001); a delete there is already done."""
    if version.kind != WRITE:
        return
    result.added.remove(version.doc_id)
    error = DataGateError(
        ErrorCode.PURGED_DELETE,
        doc_id=version.doc_id,
        modified=version.modified,
        horizon=horizon_ms,
    )
    result.rejected.append(Rejection(version.doc_id, error))


# The journal's operation values, read once: an enum member's `.value` is a descriptor call.
_PUT: str = Operation.PUT.value
_DELETE: str = Operation.DELETE.value

JOURNAL_COLUMNS = (
    "collection_id",
    "seq",
    "operation",
    "doc_id",
    "revision",
    "modified",
    "origin",
    "replica_id",
    "user_id",
    "message_id",
    "created_at",
)


def _rows_insert(
    model: type[Model],
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
    *,
    conflict: Sequence[str] = (),
    update: Sequence[str] = (),
) -> None:
    """Insert (or, with `conflict`, upsert) rows of database-ready values in one statement:
    on SQLite multi-row VALUES lists (as many rows as the parameter limit allows), on
    PostgreSQL one INSERT over the elements of one JSON array of rows.

    `bulk_create` sends every value of every row through the ORM's field machinery; with the
    model instances built for it, that was most of batch_apply's CPU. Values here are already
    what the database takes: a JSON column's value as its text (`_stored_json`: a str on
    SQLite, `msgspec.Raw` on PostgreSQL), datetimes through `adapt_datetimefield_value`.
    `INSERT ... ON CONFLICT (...) DO UPDATE` is the same clause on SQLite and PostgreSQL.
    """
    if not rows:
        return
    quote = connection.ops.quote_name
    # Only quoted table and column names and the column types of our own models go into the
    # text; values are parameters.
    insert = f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)})"
    upsert = ""
    if conflict:
        upsert = f" ON CONFLICT ({', '.join(quote(c) for c in conflict)}) DO UPDATE SET " + (
            ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in update)
        )
    if connection.vendor == "postgresql":
        # All rows as one JSON array, which PostgreSQL expands and casts itself. executemany
        # was one INSERT per row (PostgreSQL's own CPU doubled); a multi-row VALUES list has
        # thousands of parameters; one array per column (`unnest`) had psycopg write an
        # array literal element by element in Python, escaping each with a regular
        # expression: a third of a PostgreSQL batch's time (issue 21). The JSON text is
        # msgspec's, in C; bodies go in as the door's text (`msgspec.Raw`), not re-encoded.
        types = [model._meta.get_field(c).db_type(connection) for c in columns]
        values = ", ".join(
            f"(r.value->{i})::jsonb" if t == "jsonb" else f"(r.value->>{i})::{t}"
            for i, t in enumerate(types)
        )
        # The text as a server-side bound parameter: Django's cursors bind on the client,
        # which quoted and escaped all of it into the statement. Never prepared: a pooler
        # in transaction mode (PgBouncer) may hand the next statement another connection.
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as bound:
            bound.execute(
                f"{insert} SELECT {values} FROM json_array_elements(%s::json) AS r{upsert}",  # noqa: S608
                [json_array_text(rows)],
                prepare=False,
            )
        return
    with connection.cursor() as cursor:
        # Multi-row VALUES lists, not executemany. This runs while the transaction holds
        # SQLite's one write lock (BEGIN IMMEDIATE), and the sqlite3 module lets go of the
        # GIL around every step and reset: executemany did so twice per row. Each time,
        # another thread of the process that runs Python and drops the GIL often (an ORM
        # reader, the event loop) can take it back first, and on a busy machine this
        # thread then waits its turn for a CPU too: one chunk held the lock for seconds,
        # and writers queued in BEGIN IMMEDIATE gave up after their 20 s busy timeout
        # ("database is locked", tests/replication/test_concurrency.py on a loaded 2-core
        # machine).
        #
        # The statement goes to the sqlite3 cursor itself, in its own `?` style: Django's
        # wrapper rewrote every `%s` of it with a regular expression on every call (9% of
        # a pushing server's CPU, bench/RESULTS.md, issue 21). As many rows per statement
        # as SQLite's own parameter limit allows (Django assumes SQLite's old 999).
        per_statement = max(1, _sqlite_max_params() // len(columns))
        raw = cursor.cursor
        for start in range(0, len(rows), per_statement):
            batch = rows[start : start + per_statement]
            sqlite3.Cursor.execute(
                raw,
                _sqlite_statement(insert, upsert, len(columns), len(batch)),
                [value for row in batch for value in row],
            )


# SQLite 3.32+ allows 32,766 parameters per statement (the build here: 250,000); a chunk of
# 500 documents of 7 columns is 3,500.
SQLITE_PARAMS_CAP = 32_766


def _sqlite_max_params() -> int:
    """The parameters one SQLite statement may carry on this connection (capped)."""
    raw = connection.connection
    getlimit = getattr(raw, "getlimit", None)  # Python 3.11+
    if getlimit is None:
        return connection.features.max_query_params or 999
    return min(int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)), SQLITE_PARAMS_CAP)


@functools.lru_cache(maxsize=256)
def _sqlite_statement(insert: str, upsert: str, columns: int, rows: int) -> str:
    """`insert` with `rows` rows of `columns` `?` marks, then `upsert` (qmark style)."""
    row_marks = "(" + ", ".join(["?"] * columns) + ")"
    return f"{insert} VALUES {', '.join([row_marks] * rows)}{upsert}"


def batch_apply(
    *,
    actor: Actor,
    collection_id: int,
    feed: Mapping[str, Any],
    origin: str,
    replica_pk: int | None = None,
    message_id: str = "",
    policy: DocumentPolicy | None = None,
    at_ms: int | None = None,
) -> ApplyResult:
    """Apply one chunk of changes atomically and idempotently (PROTOCOL.md sections 4 and 5).

    Each change is validated on its own; a bad one is rejected with its code and the rest
    apply. A change that loses to the stored version (or is the stored version) changes
    nothing but is still listed as processed, so the sender can drop it from its journal.
    A change `actor` may not make is rejected (DG-3002, DG-3003, DG-3004; DG-1002 for an
    `accounts.access.Bearer` whose token lacks `write`). The decision is the actor's alone:
    there is no guard a caller adds or forgets.
    """
    return batch_apply_many(
        actor=actor,
        collection_id=collection_id,
        chunks=[(feed, message_id)],
        origin=origin,
        replica_pk=replica_pk,
        policy=policy,
        at_ms=at_ms,
    )[0]


@dataclass
class _Prepared:
    """A chunk validated and checked, before the transaction: its result so far, and the
    newest allowed version of each id."""

    result: ApplyResult
    winners: dict[str, Version]
    message_id: str
    # Writes the door refused, with their rejections (see `same_version_is_noop`).
    refused_writes: list[tuple[Version, Rejection]] = field(default_factory=list)


def _chunk_prepare(
    feed: Mapping[str, Any],
    message_id: str,
    *,
    origin: str,
    now: int,
    check: ChangeCheck,
    limits: DoorLimits,
    json_values: bool,
) -> _Prepared:
    parsed: ParsedFeed = parse_feed(
        feed,
        origin=origin,
        now_ms=now,
        max_skew_ms=int(settings.DATAGATE["MAX_CLOCK_SKEW_MS"]),
        limits=limits,
        json_values=json_values,
    )
    result = ApplyResult(rejected=list(parsed.rejections))
    allowed: list[Version] = []
    refused_writes: list[tuple[Version, Rejection]] = []
    for version in parsed.versions:
        refusal = check(version)
        if refusal is not None:
            rejection = Rejection(version.doc_id, refusal)
            result.rejected.append(rejection)
            if version.kind == WRITE:
                refused_writes.append((version, rejection))
        else:
            allowed.append(version)
    seen: set[str] = set()
    for version in allowed:
        if version.doc_id in seen:
            continue
        seen.add(version.doc_id)
        (result.added if version.kind == WRITE else result.removed).append(version.doc_id)
    return _Prepared(result, newest_per_id(allowed), message_id[:64], refused_writes)


def batch_apply_many(
    *,
    actor: Actor,
    collection_id: int,
    chunks: Sequence[tuple[Mapping[str, Any], str]],
    origin: str,
    replica_pk: int | None = None,
    policy: DocumentPolicy | None = None,
    at_ms: int | None = None,
    same_version_is_noop: bool = False,
    json_values: bool = False,
) -> list[ApplyResult]:
    """Apply several chunks, given as (feed, message id), in order, in one transaction.

    The outcome is exactly that of `batch_apply` on each chunk in turn: the same results, seqs
    and journal, and the same stored state. One transaction takes the collection's lock, reads
    the stored versions and writes each table once for all of them: for a live replica's
    one-change feeds, which the consumer queues while earlier ones are in the database, the
    fixed cost per chunk was most of the apply's time (bench/RESULTS.md).

    `actor` and `policy` are `batch_apply`'s; `policy`, when given, must be the
    actor's, decided for this collection (a session's, kept current by its re-checks).

    `same_version_is_noop` (a Nitrite G3 session, docs/protocol.md section 10): a write with
    the stored document's `_revision`, `_modified` and fields is that document, whatever origin
    it names, and changes nothing: not applied, and not refused (it is listed as processed).
    A G3 replica pushes back every document it pulled, under its own replica id as origin;
    by the conflict rule's last tie-break that echo would otherwise overwrite the document
    with the wrong origin (a new seq every replica pulls again), and a read-only user's echo
    would be refused at every sync.

    `json_values`: the feeds are as a JSON decoder made them (a websocket frame's), nothing
    but dicts, lists, str, int, float, bool and None: the door may take its fast encoding
    (`core.door.document_text`). The outcome is the same either way.
    """
    user_id = actor_user_id(actor)
    door = _door(actor, actor_policy(actor=actor, collection_id=collection_id, policy=policy))
    now = now_ms() if at_ms is None else at_ms
    limits = limits_from_settings()
    prepared = [
        _chunk_prepare(
            feed,
            message_id,
            origin=origin,
            now=now,
            check=door,
            limits=limits,
            json_values=json_values,
        )
        for feed, message_id in chunks
    ]
    results = [chunk.result for chunk in prepared]
    if same_version_is_noop:
        _echoes_processed(collection_id, prepared)
    ids = list(dict.fromkeys(doc_id for chunk in prepared for doc_id in chunk.winners))
    if not ids:
        return results

    with transaction.atomic():
        # The row lock serialises writers of one collection, so seqs commit in order.
        seq, horizon = collection_row(
            collection_id, ("last_seq", "purge_horizon_ms"), for_update=True
        )
        documents, tombstones = _stored_state(collection_id, ids)
        stored_bodies: dict[str, tuple[int, int, Any]] = {}
        if same_version_is_noop:
            stored_bodies = _stored_documents(
                collection_id,
                [
                    doc_id
                    for chunk in prepared
                    for doc_id, version in chunk.winners.items()
                    if _same_stamps(version, documents.get(doc_id))
                ],
            )
        # Each id's current version as the chunks apply: (is a write, what the rule needs).
        current: dict[str, tuple[bool, _Stored]] = {
            **{doc_id: (False, tomb) for doc_id, tomb in tombstones.items()},
            **{doc_id: (True, doc) for doc_id, doc in documents.items()},
        }
        final: dict[str, tuple[Version, int, int]] = {}  # id -> (version, revision, seq)
        journal: list[tuple[Any, ...]] = []
        created_at = connection.ops.adapt_datetimefield_value(timezone.now())
        for chunk in prepared:
            first = seq + 1
            for doc_id, version in chunk.winners.items():
                held = current.get(doc_id)
                if held is None and _behind_purge_horizon(version, horizon):
                    _refuse_purged(chunk.result, version, horizon)
                    continue
                if held is not None and not incoming_wins(version.key(), _held_key(*held)):
                    continue
                if (
                    same_version_is_noop
                    and held is not None
                    and held[0]
                    and _same_stamps(version, held[1])
                    and version.body == _held_body(doc_id, final, stored_bodies)
                ):
                    continue  # the stored document itself, under another origin
                seq += 1
                if version.kind == WRITE:
                    revision = version.revision
                else:
                    revision = (held[1].revision + 1) if held is not None else 1
                current[doc_id] = (
                    version.kind == WRITE,
                    _Stored(revision, version.modified, version.origin),
                )
                final[doc_id] = (version, revision, seq)
                journal.append(
                    (
                        collection_id,
                        seq,
                        _PUT if version.kind == WRITE else _DELETE,
                        doc_id,
                        revision,
                        version.modified,
                        version.origin,
                        replica_pk,
                        user_id,
                        chunk.message_id,
                        created_at,
                    )
                )
            if seq >= first:
                chunk.result.applied = seq - first + 1
                chunk.result.first_seq, chunk.result.last_seq = first, seq
        if not journal:
            return results
        _final_write(collection_id, final, documents, tombstones)
        bucket_deltas_apply(collection_id, _range_deltas(final, documents, tombstones))
        _rows_insert(JournalEntry, JOURNAL_COLUMNS, journal)
        collection_last_seq_set(collection_id, seq)
        ring_on_commit(collection_id=collection_id, seq=seq)
    return results


def _held_body(
    doc_id: str,
    final: Mapping[str, tuple[Version, int, int]],
    stored: Mapping[str, tuple[int, int, Any]],
) -> Any:
    """The body of the document `doc_id` as the batch holds it so far."""
    if doc_id in final:
        return final[doc_id][0].body
    return stored[doc_id][2] if doc_id in stored else None


def _same_stamps(version: Version, stored: _Stored | None) -> bool:
    return (
        stored is not None
        and version.kind == WRITE
        and (version.revision, version.modified) == (stored.revision, stored.stamp)
    )


def _stored_documents(collection_id: int, ids: list[str]) -> dict[str, tuple[int, int, Any]]:
    """(revision, modified, body) of the stored documents among `ids`."""
    return {
        doc_id: (revision, modified, json_value(body))
        for doc_id, revision, modified, body in rows_by_ids(
            Document, ("doc_id", "revision", "modified", "body"), collection_id, ids
        )
    }


def _echoes_processed(collection_id: int, prepared: Sequence[_Prepared]) -> None:
    """Refused writes that are the stored document itself are processed, not refused (see
    `batch_apply_many`, `same_version_is_noop`). Read outside the collection's lock: a write
    committed meanwhile reaches the replica by its own seq anyway."""
    refused = [version for chunk in prepared for version, _ in chunk.refused_writes]
    if not refused:
        return
    stored = _stored_documents(collection_id, [version.doc_id for version in refused])
    for chunk in prepared:
        for version, rejection in chunk.refused_writes:
            held = stored.get(version.doc_id)
            if held is None or held != (version.revision, version.modified, version.body):
                continue
            chunk.result.rejected.remove(rejection)
            if version.doc_id not in chunk.result.added:
                chunk.result.added.append(version.doc_id)


def _range_deltas(
    final: Mapping[str, tuple[Version, int, int]],
    documents: Mapping[str, _Stored],
    tombstones: Mapping[str, _Stored],
) -> Deltas:
    """What the batch changed in the range summaries (replication/ranges.py): each changed
    id's stored version (read for the conflict rule) out, its final version in.

    Written out flat, not with `version_delta`: it runs for every change of every write, and
    the call overhead was a third of its cost (about 1 µs a change here, bench/RESULTS.md)."""
    counts: dict[int, int] = {}
    xors: dict[int, int] = {}
    from_bytes = int.from_bytes
    for doc_id, (version, revision, _) in final.items():
        key = doc_id.encode()
        bucket = crc32(key) >> STORED_SHIFT  # the stored group of 64 buckets
        # A tombstone's revision hashes as 0 (replication/protocol/ranges.py).
        if version.kind == WRITE:
            tail = VERSION_TAIL(revision, version.modified, False)
        else:
            tail = VERSION_TAIL(0, version.modified, True)
        value = from_bytes(blake2b(key + tail, digest_size=8).digest(), "big")
        stored = documents.get(doc_id)
        if stored is not None:
            tail = VERSION_TAIL(stored.revision, stored.stamp, False)
            value ^= from_bytes(blake2b(key + tail, digest_size=8).digest(), "big")
        else:
            stored = tombstones.get(doc_id)
            if stored is None:
                counts[bucket] = counts.get(bucket, 0) + 1
            else:
                tail = VERSION_TAIL(0, stored.stamp, True)
                value ^= from_bytes(blake2b(key + tail, digest_size=8).digest(), "big")
        xors[bucket] = xors.get(bucket, 0) ^ value
    return {bucket: (counts.get(bucket, 0), value) for bucket, value in xors.items()}


def _held_key(is_write: bool, held: _Stored) -> VersionKey:
    return version_key(
        kind=WRITE if is_write else DELETE,
        modified=held.stamp,
        revision=held.revision,
        origin=held.origin,
    )


def _final_write(
    collection_id: int,
    final: Mapping[str, tuple[Version, int, int]],
    documents: Mapping[str, _Stored],
    tombstones: Mapping[str, _Stored],
) -> None:
    """Store each changed id's last winning version: a document or a tombstone row (upserted),
    dropping the row of the other kind that was stored, and run the write hooks (the search index).

    A body is stored as the JSON text the door made of it (`Version.text`): encoding it again
    here was a second pass over every document."""
    adapt_json = connection.ops.adapt_json_value
    postgres = connection.vendor == "postgresql"
    doc_rows: list[tuple[Any, ...]] = []
    tomb_rows: list[tuple[Any, ...]] = []
    written: list[tuple[str, Mapping[str, Any]]] = []  # (doc_id, body) for the search index
    drop_docs: list[str] = []
    drop_tombs: list[str] = []
    for doc_id, (version, revision, seq) in final.items():
        if version.kind == WRITE:
            body = version.body or {}
            doc_rows.append(
                (
                    collection_id,
                    doc_id,
                    _stored_json(body, version.text, adapt_json, postgres),
                    revision,
                    version.modified,
                    version.origin,
                    seq,
                )
            )
            written.append((doc_id, body))
            if doc_id in tombstones:
                drop_tombs.append(doc_id)
        else:
            tomb_rows.append(
                (collection_id, doc_id, version.modified, revision, version.origin, seq)
            )
            if doc_id in documents:
                drop_docs.append(doc_id)
    for batch in _in_batches(drop_docs):
        Document.objects.filter(collection_id=collection_id, doc_id__in=batch).delete()
    for batch in _in_batches(drop_tombs):
        Tombstone.objects.filter(collection_id=collection_id, doc_id__in=batch).delete()
    _rows_insert(
        Document,
        ("collection_id", "doc_id", "body", "revision", "modified", "origin", "seq"),
        doc_rows,
        conflict=("collection_id", "doc_id"),
        update=("body", "revision", "modified", "origin", "seq"),
    )
    _rows_insert(
        Tombstone,
        ("collection_id", "doc_id", "deleted_at", "revision", "origin", "seq"),
        tomb_rows,
        conflict=("collection_id", "doc_id"),
        update=("deleted_at", "revision", "origin", "seq"),
    )
    for hook in _write_hooks.values():
        hook(collection_id=collection_id, upserts=written, deletes=drop_docs)


def _stored_json(
    body: Mapping[str, Any], text: str | None, adapt_json: Callable[..., Any], postgres: bool
) -> Any:
    """The database parameter for a body: its door-made JSON text when there is one."""
    if text is None:
        if postgres:  # what Django's JSONField would send: json.dumps of the body
            return msgspec.Raw(json.dumps(body))
        return adapt_json(body, None)
    if postgres:
        return msgspec.Raw(text)  # spliced into `_rows_insert`'s JSON array of rows
    return text
