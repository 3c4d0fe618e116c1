"""Plain-row statements of the hot paths: parameterised SQL over the models' own tables.

Every push batch, pull page and CouchDB request reads or locks its collection's row, and
every pull page reads a range of documents and tombstones. Through the ORM each of these
compiled a queryset on every call: 10-20% of a pushing or pulling server's CPU (py-spy,
bench/RESULTS.md, "Issue 21: plain-row statements"). Here each statement's text is built
once per shape (table and column names quoted by the connection, never user input) and
executed with parameters. The values are the same as the ORM's: integers, strings, and JSON
bodies either decoded (`json_value`) or left as the text the database holds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import msgspec
from django.db import connection
from django.db.models import Model

from accounts.models import Tenant
from replication.models import Collection, Document, Replica, ReplicaSession, Tombstone


def json_value(raw: Any) -> Any:
    """A JSON column as a raw cursor returns it: text (SQLite; Django's PostgreSQL loaders
    hand jsonb over as text too), else already decoded."""
    return json.loads(raw) if isinstance(raw, (str, bytes, bytearray)) else raw


def column(model: type[Model], field: str) -> str:
    """The quoted column of a model's field (`collection` -> "collection_id")."""
    name = model._meta.get_field(field).column  # type: ignore[union-attr]
    assert isinstance(name, str)
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@functools.lru_cache(maxsize=32)
def _collection_select(vendor: str, fields: tuple[str, ...], for_update: bool) -> str:
    columns = ", ".join(column(Collection, f) for f in fields)
    lock = " FOR UPDATE" if for_update and connection.features.has_select_for_update else ""
    return f"SELECT {columns} FROM {table(Collection)} WHERE {column(Collection, 'id')} = %s{lock}"  # noqa: S608


def collection_row(
    collection_id: int, fields: Sequence[str], *, for_update: bool = False
) -> tuple[Any, ...]:
    """`fields` of one collection's row; with `for_update` the row is locked for the
    transaction (PostgreSQL's FOR UPDATE; SQLite's IMMEDIATE transaction already holds the
    database's write lock). Collection.DoesNotExist when there is no such collection."""
    sql = _collection_select(connection.vendor, tuple(fields), for_update)
    with connection.cursor() as cursor:
        cursor.execute(sql, [collection_id])
        row = cursor.fetchone()
    if row is None:
        raise Collection.DoesNotExist(f"collection {collection_id}")
    return tuple(row)


@functools.lru_cache(maxsize=8)
def _collection_and_tenant_select(vendor: str) -> str:
    tenant_columns = ", ".join(f"t.{column(Tenant, f.name)}" for f in Tenant._meta.concrete_fields)
    collection_columns = ", ".join(
        f"c.{column(Collection, f.name)}" for f in Collection._meta.concrete_fields
    )
    return (
        f"SELECT {tenant_columns}, {collection_columns} FROM {table(Tenant)} t "  # noqa: S608
        f"LEFT JOIN {table(Collection)} c ON c.{column(Collection, 'tenant')} = "
        f"t.{column(Tenant, 'id')} AND c.{column(Collection, 'name')} = %s "
        f"WHERE t.{column(Tenant, 'slug')} = %s"
    )


def collection_and_tenant(tenant_slug: str, name: str) -> tuple[Collection | None, Tenant | None]:
    """The collection `name` of the tenant `tenant_slug` (with its tenant cached on it) and
    the tenant, in one statement: (None, tenant) when the tenant has no such collection,
    (None, None) when there is no such tenant. A Connect asks this first; through the ORM
    (`select_related`) composing it was a sixth of a connecting server's busy time
    (bench/RESULTS.md, "Issue 21: the connect path, profiled")."""
    with connection.cursor() as cursor:
        cursor.execute(_collection_and_tenant_select(connection.vendor), [name, tenant_slug])
        row = cursor.fetchone()
    if row is None:
        return None, None
    split = len(Tenant._meta.concrete_fields)
    tenant = _instance(Tenant, row[:split])
    if row[split] is None:
        return None, tenant
    collection = _instance(Collection, row[split:])
    collection.tenant = tenant
    return collection, tenant


def _instance(model: type[Any], values: Sequence[Any]) -> Any:
    """A model instance from its concrete fields' raw column values, converted as the ORM
    converts them (the backend's converters, then the field's: SQLite's datetime text)."""
    fields = model._meta.concrete_fields
    converted = []
    for field, value in zip(fields, values, strict=True):
        col = field.get_col(model._meta.db_table)
        for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
            value = convert(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, [field.attname for field in fields], converted)


@functools.lru_cache(maxsize=8)
def _last_seq_update(vendor: str) -> str:
    return (
        f"UPDATE {table(Collection)} SET {column(Collection, 'last_seq')} = %s "  # noqa: S608
        f"WHERE {column(Collection, 'id')} = %s"
    )


def collection_last_seq_set(collection_id: int, seq: int) -> None:
    """Record a collection's newest seq (inside the writer's transaction, under its lock)."""
    with connection.cursor() as cursor:
        cursor.execute(_last_seq_update(connection.vendor), [seq, collection_id])


# Each body is read in one of three ways: not at all, decoded, or as the JSON text stored.
BODY_NONE, BODY_VALUE, BODY_TEXT = "none", "value", "text"


@functools.lru_cache(maxsize=32)
def _range_select(vendor: str, model: type[Model], body: str, bounded: bool) -> str:
    fields = ["seq", "doc_id", "modified" if model is Document else "deleted_at", "revision"]
    columns = [column(model, f) for f in (*fields, "origin")]
    if model is Document and body != BODY_NONE:
        body_column = column(Document, "body")
        # SQLite stores JSON as text already; PostgreSQL's jsonb is asked for its text.
        columns.append(f"{body_column}::text" if vendor == "postgresql" else body_column)
    seq = column(model, "seq")
    upper = f" AND {seq} <= %s" if bounded else ""
    return (
        f"SELECT {', '.join(columns)} FROM {table(model)} "  # noqa: S608
        f"WHERE {column(model, 'collection')} = %s AND {seq} > %s{upper} "
        f"ORDER BY {seq} LIMIT %s"
    )


def seq_range(
    model: type[Document] | type[Tombstone],
    *,
    collection_id: int,
    after_seq: int,
    up_to_seq: int | None,
    limit: int,
    body: str = BODY_NONE,
) -> list[tuple[Any, ...]]:
    """The rows of `model` with `after_seq < seq <= up_to_seq` in seq order, at most `limit`:
    (seq, doc_id, stamp, revision, origin[, body]), the body as `body` says (documents only;
    as text it is the database's JSON text, never decoded)."""
    sql = _range_select(connection.vendor, model, body, up_to_seq is not None)
    params: list[Any] = [collection_id, after_seq]
    if up_to_seq is not None:
        params.append(up_to_seq)
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if model is Document and body == BODY_VALUE:
        return [(*row[:5], json_value(row[5])) for row in rows]
    return rows


# Ids per statement: under SQLite's default limit of 999 parameters with room to spare.
IDS_PER_STATEMENT = 500


_json_encode = msgspec.json.Encoder().encode


def json_array_text(values: Sequence[Any]) -> str:
    """`values` as the text of one JSON array, made by msgspec in C: how the plain-row
    statements pass many values to PostgreSQL as one parameter (`msgspec.Raw` items go in as
    the JSON they hold; datetimes as ISO 8601 text)."""
    return _json_encode(values).decode("utf-8")


@functools.lru_cache(maxsize=64)
def _ids_select(vendor: str, model: type[Model], fields: tuple[str, ...], count: int) -> str:
    if vendor == "postgresql":
        # One probe of the unique (collection, doc_id) index per id, whatever the planner's
        # statistics say. `WHERE collection = %s AND doc_id = ANY(%s)` was planned from the
        # statistics: on a collection that grew faster than ANALYZE ran (a bulk push, an
        # import), PostgreSQL took it for a few rows and scanned all of them for every lookup
        # (a CouchDB push of 50,000 documents slowed quadratically; bench/RESULTS.md). The
        # LATERAL subquery with LIMIT 1 is not flattened, so the ids drive the lookups. The
        # ids come as one JSON text (`json_array_text`): no array for psycopg to write.
        columns = ", ".join(f"found.{column(model, f)}" for f in fields)
        inner = ", ".join(column(model, f) for f in fields)
        return (
            f"SELECT {columns} FROM json_array_elements_text(%s::json) AS wanted(doc_id) "  # noqa: S608
            f"CROSS JOIN LATERAL (SELECT {inner} FROM {table(model)} "
            f"WHERE {column(model, 'collection')} = %s "
            f"AND {column(model, 'doc_id')} = wanted.doc_id LIMIT 1) AS found"
        )
    columns = ", ".join(column(model, f) for f in fields)
    return (
        f"SELECT {columns} FROM {table(model)} "  # noqa: S608
        f"WHERE {column(model, 'collection')} = %s "
        f"AND {column(model, 'doc_id')} IN ({', '.join(['%s'] * count)})"
    )


def rows_by_ids(
    model: type[Model], fields: Sequence[str], collection_id: int, ids: Sequence[str]
) -> list[tuple[Any, ...]]:
    """`fields` of the model's rows of one collection whose `doc_id` is among `ids`, as
    plain tuples (JSON columns as `json_value` takes them). Each row once, however often
    `ids` names it."""
    ids = list(dict.fromkeys(ids))
    found: list[tuple[Any, ...]] = []
    vendor = connection.vendor
    with connection.cursor() as cursor:
        for start in range(0, len(ids), IDS_PER_STATEMENT):
            batch = list(ids[start : start + IDS_PER_STATEMENT])
            sql = _ids_select(vendor, model, tuple(fields), len(batch))
            params: list[Any] = (
                [json_array_text(batch), collection_id]
                if vendor == "postgresql"
                else [collection_id, *batch]
            )
            cursor.execute(sql, params)
            found.extend(cursor.fetchall())
    return found


@functools.lru_cache(maxsize=8)
def _replica_ack_update(vendor: str) -> str:
    acked, pulled = column(Replica, "last_acked_seq"), column(Replica, "pulled_count")
    return (
        f"UPDATE {table(Replica)} SET "  # noqa: S608
        f"{acked} = CASE WHEN {acked} < %s THEN %s ELSE {acked} END, "
        f"{pulled} = {pulled} + %s, {column(Replica, 'last_seen')} = %s "
        f"WHERE {column(Replica, 'id')} = %s"
    )


def replica_ack_record(replica_pk: int, *, seq: int, pulled: int, seen: Any) -> None:
    """One statement for a replica's ack: its acknowledged seq (never backwards), the count of
    documents it pulled, and when it was last seen (an aware datetime)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _replica_ack_update(connection.vendor),
            [seq, seq, pulled, connection.ops.adapt_datetimefield_value(seen), replica_pk],
        )


@functools.lru_cache(maxsize=8)
def _replica_session_insert(vendor: str) -> str:
    columns = ", ".join(
        column(ReplicaSession, f)
        for f in ("replica", "started_at", "ended_at", "address", "client_version")
    )
    return f"INSERT INTO {table(ReplicaSession)} ({columns}) VALUES (%s, %s, NULL, %s, %s)"  # noqa: S608


def replica_session_insert(
    replica_pk: int, *, started: Any, address: str, client_version: str
) -> None:
    """A replica's new session record (what `ReplicaSession.objects.create` wrote, without
    composing the insert on every Connect): open, started at `started` (an aware datetime)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _replica_session_insert(connection.vendor),
            [
                replica_pk,
                connection.ops.adapt_datetimefield_value(started),
                address,
                client_version,
            ],
        )


@functools.lru_cache(maxsize=8)
def _replica_push_update(vendor: str) -> str:
    pushed, rejected = column(Replica, "pushed_count"), column(Replica, "rejected_count")
    last = column(Replica, "last_pushed_seq")
    return (
        f"UPDATE {table(Replica)} SET {pushed} = {pushed} + %s, "  # noqa: S608
        f"{rejected} = {rejected} + %s, {column(Replica, 'last_seen')} = %s, "
        f"{last} = COALESCE(%s, {last}) WHERE {column(Replica, 'id')} = %s"
    )


def replica_push_record(
    replica_pk: int, *, applied: int, rejected: int, last_seq: int | None, seen: Any
) -> None:
    """One statement for a replica's push: its counters, when it was last seen (an aware
    datetime) and, when the push committed changes, the seq of its last one."""
    with connection.cursor() as cursor:
        cursor.execute(
            _replica_push_update(connection.vendor),
            [
                applied,
                rejected,
                connection.ops.adapt_datetimefield_value(seen),
                last_seq,
                replica_pk,
            ],
        )


def statistics_refresh(models: Sequence[type[Model]]) -> None:
    """PostgreSQL: ANALYZE the models' tables now (a no-op elsewhere).

    After a bulk load (an import), PostgreSQL plans with the statistics of the table as it was
    until autovacuum analyses it: a table it believed nearly empty got every pull page planned
    as a bitmap scan and a sort of all the rows after the marker, which costs more with every
    row (20-35 ms a page at 100,000, bench/RESULTS.md "Issue 21: plain-row statements")."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {', '.join(table(model) for model in models)}")
