"""Replica bookkeeping: connects and disconnects, pushed and acknowledged positions, and the
live feed's latency per minute that the console charts.

A replica is one client database (a device) of one user in one collection; each connect opens
a `ReplicaSession` record. Positions never move backwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from replication.models import FeedLatencyMinute, Replica, ReplicaSession
from replication.rows import replica_ack_record, replica_push_record, replica_session_insert
from replication.services.engine import LOOKUP_BATCH

# A polling replica's connects this close to its last session's end continue that session.
POLLING_SESSION_GAP = timedelta(seconds=60)


def replica_connected(
    *,
    collection_id: int,
    replica_id: str,
    user_id: int,
    name: str = "",
    client_version: str = "",
    address: str = "",
    polling: bool = False,
) -> Replica:
    """Register a replica's connect: online, and a session record for the console.

    A `polling` replica (Nitrite G3) opens a fresh socket for every sync, once a second by
    default: its connects within POLLING_SESSION_GAP of its last session's end continue that
    session record instead of adding one per poll (86,400 rows a day per replica otherwise).
    """
    replica = _replica_upsert(
        collection_id=collection_id,
        replica_id=replica_id,
        user_id=user_id,
        name=name[:200],
        client_version=client_version[:100],
        address=address[:100],
    )
    if polling and replica.sessions_count > 1:
        latest = ReplicaSession.objects.filter(replica=replica).order_by("-started_at").first()
        if latest is not None and (
            latest.ended_at is None or latest.ended_at >= _now() - POLLING_SESSION_GAP
        ):
            ReplicaSession.objects.filter(pk=latest.pk).update(ended_at=None, address=address[:100])
            return replica
    # A replica has one session at a time: a session left open by a crash ends here. Only
    # this function opens sessions, each counted in sessions_count: at 1 there is none yet.
    if replica.sessions_count > 1:
        ReplicaSession.objects.filter(replica=replica, ended_at__isnull=True).update(
            ended_at=_now()
        )
    replica_session_insert(
        replica.pk, started=_now(), address=address[:100], client_version=client_version[:100]
    )
    return replica


# What a connect sets on the replica's row; the others keep their defaults on insert.
_CONNECT_COLUMNS = (
    "collection_id",
    "replica_id",
    "user_id",
    "name",
    "client_version",
    "address",
    "online",
    "sessions_count",
    "first_seen",
    "last_seen",
    "last_pushed_seq",
    "last_acked_seq",
    "pushed_count",
    "pulled_count",
    "rejected_count",
)


def _replica_upsert(
    *,
    collection_id: int,
    replica_id: str,
    user_id: int,
    name: str,
    client_version: str,
    address: str,
) -> Replica:
    """Insert the replica's row or update the existing one, in one statement, and return it.

    `INSERT ... ON CONFLICT (collection, user, replica_id) DO UPDATE ... RETURNING` (the same on
    SQLite and PostgreSQL): online, one more session, seen now, this connect's client version
    and address, and its name unless it gave none. No read before the write, so concurrent
    connects of one replica cannot both insert. `get_or_create`, an update and a re-read were
    eight queries (bench/connect_path.py).
    """
    quote = connection.ops.quote_name
    now = connection.ops.adapt_datetimefield_value(_now())
    values = (
        *(collection_id, replica_id, user_id, name, client_version, address),
        *(True, 1, now, now, 0, 0, 0, 0, 0),
    )
    table = quote(Replica._meta.db_table)
    returning = ", ".join(quote(f.column) for f in Replica._meta.concrete_fields if f.column)
    marks = ", ".join(["%s"] * len(_CONNECT_COLUMNS))

    def excluded(column: str) -> str:
        return f"EXCLUDED.{quote(column)}"

    # Only quoted names of our own table and columns go into the text; values are parameters.
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(c) for c in _CONNECT_COLUMNS)}) "  # noqa: S608
        f"VALUES ({marks}) "
        f"ON CONFLICT ({quote('collection_id')}, {quote('user_id')}, {quote('replica_id')}) "
        f"DO UPDATE SET {quote('online')} = {excluded('online')}, "
        f"{quote('name')} = CASE WHEN {excluded('name')} = '' THEN {table}.{quote('name')} "
        f"ELSE {excluded('name')} END, "
        f"{quote('client_version')} = {excluded('client_version')}, "
        f"{quote('address')} = {excluded('address')}, "
        f"{quote('sessions_count')} = {table}.{quote('sessions_count')} + 1, "
        f"{quote('last_seen')} = {excluded('last_seen')} "
        f"RETURNING {returning}"
    )
    # A raw query builds the instance with the fields' own converters (datetimes on SQLite).
    # All its rows are read: SQLite finishes the statement, and commits it, on the last step.
    rows = list(Replica.objects.raw(sql, values))
    return rows[0]


def replica_pushed(*, replica_pk: int, applied: int, rejected: int, last_seq: int | None) -> None:
    # One plain statement: the compiled ORM update (F expressions) was 3-4% of a pushing
    # server's busy time (bench/RESULTS.md, "Issue 21: frames to the socket at once").
    replica_push_record(
        replica_pk, applied=applied, rejected=rejected, last_seq=last_seq, seen=_now()
    )


def replica_acked(
    *, replica_pk: int, seq: int, pulled: int = 0, latency_ms: int | None = None
) -> None:
    """Record the server marker a replica acknowledged; it never moves backwards.

    `latency_ms` (a live feed's time from sent to acked, measured by the consumer) goes into
    the collection's per-minute feed latency that the console charts.
    """
    # One plain statement: two compiled ORM updates per ack were 9% of a catch-up's server
    # time (bench/RESULTS.md, "Issue 21: plain-row statements").
    replica_ack_record(replica_pk, seq=seq, pulled=pulled, seen=_now())
    if latency_ms is not None:
        collection_id = Replica.objects.filter(pk=replica_pk).values_list(
            "collection_id", flat=True
        )[0]
        feed_latency_record(collection_id=collection_id, latency_ms=latency_ms)


def feed_latency_record(
    *, collection_id: int, latency_ms: int, acks: int = 1, total_ms: int | None = None
) -> None:
    """Add `acks` feed acks to this minute's row: `latency_ms` is their largest latency and
    `total_ms` their sum (`latency_ms * acks` when not given)."""
    latency_ms = max(0, int(latency_ms))
    total = latency_ms * acks if total_ms is None else max(0, int(total_ms))
    minute = _now().replace(second=0, microsecond=0)
    row = FeedLatencyMinute.objects.filter(collection_id=collection_id, minute=minute)
    updated = row.update(
        acks=F("acks") + acks,
        total_ms=F("total_ms") + total,
        max_ms=Greatest(F("max_ms"), Value(latency_ms)),
    )
    if updated:
        return
    with transaction.atomic():
        _, created = FeedLatencyMinute.objects.get_or_create(
            collection_id=collection_id,
            minute=minute,
            defaults={"acks": acks, "total_ms": total, "max_ms": latency_ms},
        )
    if not created:  # another process created the row between the update and the insert
        feed_latency_record(
            collection_id=collection_id, latency_ms=latency_ms, acks=acks, total_ms=total
        )


def feed_latency_record_many(*, samples: Mapping[int, tuple[int, int, int]]) -> None:
    """Record live feed acks of many collections: pk -> (acks, total ms, max ms)."""
    for collection_id, (acks, total_ms, max_ms) in samples.items():
        if acks > 0:
            feed_latency_record(
                collection_id=collection_id, latency_ms=max_ms, acks=acks, total_ms=total_ms
            )


def replicas_acked(*, positions: Mapping[int, int]) -> None:
    """Record many live replicas' acknowledged positions in one transaction (replica pk ->
    seq); positions never move backwards."""
    now = _now()
    # Live replicas of a collection mostly ack the same feed: one UPDATE per distinct seq.
    by_seq: dict[int, list[int]] = {}
    for replica_pk, seq in positions.items():
        by_seq.setdefault(seq, []).append(replica_pk)
    with transaction.atomic():
        for seq, replica_pks in by_seq.items():
            for start in range(0, len(replica_pks), LOOKUP_BATCH):
                Replica.objects.filter(
                    pk__in=replica_pks[start : start + LOOKUP_BATCH], last_acked_seq__lt=seq
                ).update(last_acked_seq=seq, last_seen=now)


def replica_disconnected(*, replica_pk: int, acked_seq: int | None = None) -> None:
    """Mark a replica offline (and record its last acknowledged position, if given)."""
    if acked_seq is not None:
        Replica.objects.filter(pk=replica_pk, last_acked_seq__lt=acked_seq).update(
            last_acked_seq=acked_seq
        )
    Replica.objects.filter(pk=replica_pk).update(online=False, last_seen=_now())
    ReplicaSession.objects.filter(replica_id=replica_pk, ended_at__isnull=True).update(
        ended_at=_now()
    )


def _now() -> datetime:
    return timezone.now()
