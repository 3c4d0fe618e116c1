"""Prometheus metrics: every DataGate metric is defined here, with the functions that record it.

Consumers, services and the HTTP layer call the small `*_record`/`connection_*` functions below;
nothing else touches prometheus_client. Counters and histograms live in this process (each
daphne process is scraped on its own). Gauges that the database already knows (replicas online,
replication lag, documents, GC runs recorded by maintenance) are computed from it at scrape time,
so they are right whichever process answers the scrape. GC runs are counted from the
maintenance runs recorded in the database (`datagate_maintenance_runs_total{job="gc"}`).

`/metrics` is protected: a bearer token with the `metrics` scope, or a staff session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


# --- gauges computed from the database at scrape time ---------------------------------------


class DatabaseCollector(Collector):
    """Replicas online, replication lag and stored totals, read from the database per scrape."""

    def collect(self) -> Iterable[Metric]:
        from django.db.models import Count, F, Max, Sum

        from replication.models import Collection, Document, Replica

        online = Replica.objects.filter(online=True)
        yield GaugeMetricFamily(
            "datagate_replicas_online", "Replicas connected now.", value=online.count()
        )
        lag = online.annotate(lag=F("collection__last_seq") - F("last_acked_seq")).aggregate(
            max_lag=Max("lag"), total_lag=Sum("lag")
        )
        yield GaugeMetricFamily(
            "datagate_replica_lag_max",
            "Largest number of sequence numbers an online replica has not acknowledged.",
            value=max(int(lag["max_lag"] or 0), 0),
        )
        yield GaugeMetricFamily(
            "datagate_replica_lag_total",
            "Sequence numbers not yet acknowledged, summed over online replicas.",
            value=max(int(lag["total_lag"] or 0), 0),
        )
        yield GaugeMetricFamily(
            "datagate_collections", "Collections stored.", value=Collection.objects.count()
        )
        yield GaugeMetricFamily(
            "datagate_documents", "Live documents stored.", value=Document.objects.count()
        )
        errors = GaugeMetricFamily(
            "datagate_error_events",
            "Error events kept in the database (the console's list), by code.",
            labels=["code"],
        )
        from replication.models import ErrorEvent, MaintenanceRun

        for row in ErrorEvent.objects.values("code").annotate(n=Count("id")).order_by("code"):
            errors.add_metric([row["code"]], row["n"])
        yield errors
        # Maintenance runs are recorded by whoever ran them (the in-server schedule of any
        # process, or a command), so they are counted from the database.
        runs = CounterMetricFamily(
            "datagate_maintenance_runs",
            "Maintenance runs recorded (GC, journal pruning, imports), by job and outcome.",
            labels=["job", "outcome"],
        )
        finished = MaintenanceRun.objects.exclude(finished_at=None)
        counted = finished.values_list("job", "ok").annotate(n=Count("id")).order_by("job", "ok")
        for job, ok, count in counted:
            runs.add_metric([job, "ok" if ok else "failed"], count)
        yield runs


REGISTRY.register(DatabaseCollector())


# --- the /metrics view and the HTTP latency middleware --------------------------------------


def _allowed(request: HttpRequest) -> tuple[bool, int, str]:
    """(allowed, status, reason): a `metrics`-scoped bearer token or a staff session."""
    from accounts.tokens import TokenRejected, token_authenticate

    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer":
            return False, 401, "DG-1001 failed to validate token: use the Bearer scheme"
        try:
            info = token_authenticate(raw.strip())
        except TokenRejected as rejected:
            return False, 401, f"DG-1001 failed to validate token: {rejected.reason}"
        if "metrics" not in info.scopes:
            return False, 403, "DG-1002 token lacks scope 'metrics'"
        return True, 200, ""
    user = getattr(request, "user", AnonymousUser())
    if user.is_authenticated and user.is_active and user.is_staff:
        return True, 200, ""
    return False, 401, "DG-1001 failed to validate token: no token given"


def metrics_view(request: HttpRequest) -> HttpResponse:
    allowed, status, reason = _allowed(request)
    if not allowed:
        code = reason.split(" ", 1)[0]
        error_record(code=code)
        response: HttpResponse = JsonResponse(
            {"error": {"code": code, "message": reason, "status": status}}, status=status
        )
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="datagate"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware:
    """Observe every HTTP request's latency, labelled by its URL route (not the raw path)."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else "unmatched"
        http_request_record(
            method=request.method or "",
            route=route[:100],
            status=int(getattr(response, "status_code", 500)),
            seconds=time.perf_counter() - started,
        )
        return response
