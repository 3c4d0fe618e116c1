"""Prometheus metrics: every counter and histogram DataGate records, and the functions that
record them.

Consumers, services and the HTTP layer call the small `*_record`/`connection_*` functions below;
nothing else touches these counters. They live in this process (each daphne process is scraped
on its own). This module reads no model: the gauges that the database already knows (replicas
online, replication lag, documents, error events, maintenance runs) are computed from it at
scrape time by `datagate_site/metrics.py`, which also serves `/metrics` from `REGISTRY`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()

CONNECTIONS = Counter(
    "datagate_connections",
    "Websocket connections accepted, by endpoint (sync or topics).",
    ["endpoint"],
    registry=REGISTRY,
)
DISCONNECTIONS = Counter(
    "datagate_disconnections",
    "Websocket connections closed, by endpoint.",
    ["endpoint"],
    registry=REGISTRY,
)
PUSHED_CHANGES = Counter(
    "datagate_pushed_changes",
    "Changes received from replicas and the HTTP API, by outcome (applied, rejected).",
    ["outcome"],
    registry=REGISTRY,
)
FEEDS = Counter(
    "datagate_feeds_sent",
    "Live feeds sent to replicas.",
    registry=REGISTRY,
)
BYTES = Counter(
    "datagate_bytes",
    "Websocket payload bytes, by direction (in, out).",
    ["direction"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "datagate_errors",
    "Errors reported to clients, by DG code.",
    ["code"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "datagate_http_request_duration_seconds",
    "HTTP request latency, by method, URL route and status class.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)


# --- recording functions (the only API the rest of the code uses) ---------------------------


def connection_opened(*, endpoint: str) -> None:
    CONNECTIONS.labels(endpoint=endpoint).inc()


def connection_closed(*, endpoint: str) -> None:
    DISCONNECTIONS.labels(endpoint=endpoint).inc()


def push_record(*, applied: int, rejected: int) -> None:
    if applied:
        PUSHED_CHANGES.labels(outcome="applied").inc(applied)
    if rejected:
        PUSHED_CHANGES.labels(outcome="rejected").inc(rejected)


def feed_record(*, count: int = 1) -> None:
    FEEDS.inc(count)


_BYTES_BY_DIRECTION = {direction: BYTES.labels(direction=direction) for direction in ("in", "out")}


def bytes_record(*, direction: str, count: int) -> None:
    # Called for every frame: the labelled counters are looked up once.
    counter = _BYTES_BY_DIRECTION.get(direction) or BYTES.labels(direction=direction)
    counter.inc(count)


def error_record(*, code: str) -> None:
    ERRORS.labels(code=code).inc()


def http_request_record(*, method: str, route: str, status: int, seconds: float) -> None:
    HTTP_LATENCY.labels(method=method, route=route, status=f"{status // 100}xx").observe(seconds)
