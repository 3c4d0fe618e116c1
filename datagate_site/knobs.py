"""The DataGate knobs: every tunable of the sync server, with its default and documentation.

`settings.DATAGATE` is built from this table. Each knob can be overridden by an environment
variable named `DATAGATE_<NAME>`; `datagate_site.checks` validates the result at start-up.
The README's configuration table is this table.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    name: str
    default: Any
    kind: type
    doc: str


KNOBS: tuple[Knob, ...] = (
    Knob("CHUNK_SIZE", 500, int, "Largest number of changes the server sends in one pull chunk."),
    Knob("MAX_FRAME_BYTES", 1024 * 1024, int, "Largest websocket frame accepted (close 1009)."),
    Knob(
        "MAX_DOCUMENT_DEPTH",
        64,
        int,
        "Deepest nesting of objects and arrays a document may have (DG-4011).",
    ),
    Knob("MAX_CLOCK_SKEW_MS", 5 * 60 * 1000, int, "How far in the future `_modified` may be."),
    Knob("TOMBSTONE_TTL_DAYS", 30, int, "Days a tombstone is kept before garbage collection."),
    Knob("CONNECT_TIMEOUT", 10.0, float, "Seconds a socket may stay open without a Connect."),
    Knob("FEED_WINDOW", 64, int, "Unacknowledged live feeds in flight per replica."),
    Knob("FEED_ACK_TIMEOUT", 60.0, float, "Seconds without a feed.ack before close 4429."),
    Knob("PULL_CHUNKS_IN_FLIGHT", 4, int, "Pull chunks sent ahead of the client's acks."),
    Knob(
        "LIVE_POLL_INTERVAL",
        2.0,
        float,
        "Seconds between database checks of live collections: a lost doorbell delays a feed "
        "at most this long.",
    ),
    Knob(
        "LIVE_COALESCE_MAX",
        0.05,
        float,
        "Seconds a live feed may wait for the replicas' acks of the previous one, so that "
        "changes go out together on a busy server (0 sends every change at once).",
    ),
    Knob(
        "AUTO_CREATE_COLLECTIONS", True, bool, "Writers and admins create a collection on connect."
    ),
    Knob("SERVER_ID", socket.gethostname(), str, "This server's `origin` in message headers."),
    Knob("MAINTENANCE_INTERVAL", 0.0, float, "Seconds between in-server GC runs; 0 turns it off."),
    Knob(
        "JOURNAL_RETENTION_DAYS",
        30,
        int,
        "Days journal entries are kept (live replicas' needs win).",
    ),
    Knob("ACCESS_TOKEN_TTL", 3600, int, "Lifetime in seconds of issued OAuth2 access tokens."),
    Knob(
        "CORS_ALLOWED_ORIGINS",
        "",
        str,
        "Comma-separated browser origins (scheme://host[:port]) allowed to call the HTTP API.",
    ),
    Knob(
        "API_RATE_LIMIT",
        "1200/min",
        str,
        "HTTP API requests allowed per token (N/sec, N/min, N/hour or N/day); DG-5002 beyond.",
    ),
    Knob(
        "TOPIC_COMMIT_SHARE",
        0.5,
        float,
        "Share (0..1) of a topic batch to be committed before the next batch goes out.",
    ),
    Knob("TOPIC_PAGE_SIZE", 100, int, "Default page size (largest batch) of a new topic."),
    Knob("TOPIC_MAX_PUBLISH", 1000, int, "Most messages one topic publish may carry."),
    Knob(
        "TOPIC_POLL_INTERVAL",
        5.0,
        float,
        "Seconds between a process's checks of its subscribed topics (covers lost doorbells).",
    ),
    Knob(
        "REFRESH_TOKEN_TTL",
        30 * 24 * 3600,
        int,
        "Lifetime in seconds of OAuth2 refresh tokens (0: they do not age out).",
    ),
    Knob(
        "SESSION_RECHECK_INTERVAL",
        5.0,
        float,
        "Seconds between a live session's re-checks of its token and permissions.",
    ),
    Knob(
        "DRAIN_DELAY",
        0.0,
        float,
        "Seconds a stopping server answers /readyz with 503 before it closes its sessions, so "
        "the load balancer stops sending it new connections first (docs/deploy.md).",
    ),
    Knob(
        "DRAIN_SPREAD",
        5.0,
        float,
        "Seconds over which a stopping server spreads the retry hints (retryAfterMs) of its "
        "sessions' Disconnects, so replicas do not all reconnect in the same instant.",
    ),
    Knob(
        "ALLOWED_ORIGINS",
        "",
        str,
        "Comma-separated websocket Origins browsers may connect from (empty: the server's own).",
    ),
)


def origins_list(raw: str) -> list[str]:
    """The CORS_ALLOWED_ORIGINS knob as a list of origins."""
    return [origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip()]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(knob: Knob, raw: str) -> Any:
    if knob.kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"DATAGATE_{knob.name}={raw!r} is not a boolean (use true or false)")
    try:
        return knob.kind(raw)
    except ValueError as exc:
        raise ValueError(
            f"DATAGATE_{knob.name}={raw!r} is not a valid {knob.kind.__name__}"
        ) from exc


def knobs_from_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the DATAGATE settings dict: defaults, overridden by `DATAGATE_<NAME>` variables."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for knob in KNOBS:
        raw = env.get(f"DATAGATE_{knob.name}")
        values[knob.name] = knob.default if raw is None else _parse(knob, raw)
    return values
