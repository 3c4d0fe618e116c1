"""`/metrics`: the Prometheus scrape view, the gauges read from the database, the HTTP latency
middleware.

The counters and histograms, and the functions that record them, are in `core/metrics.py` (the
registry every layer records into; it reads no model). Gauges that the database already knows
(replicas online, replication lag, documents, GC runs recorded by maintenance) are computed from
it here at scrape time, so they are right whichever process answers the scrape. GC runs are
counted from the maintenance runs recorded in the database
(`datagate_maintenance_runs_total{job="gc"}`).

`/metrics` is protected: a bearer token with the `metrics` scope, or a staff session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db.models import Count, F, Max, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accounts.tokens import TokenRejected, token_authenticate
from core.metrics import REGISTRY, error_record, http_request_record
from replication.models import Collection, Document, ErrorEvent, MaintenanceRun, Replica

# --- gauges computed from the database at scrape time ---------------------------------------


class DatabaseCollector(Collector):
    """Replicas online, replication lag and stored totals, read from the database per scrape."""

    def collect(self) -> Iterable[Metric]:
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
