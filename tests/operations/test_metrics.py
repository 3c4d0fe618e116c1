"""Prometheus metrics at /metrics: protected, and counting what happens."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from accounts.access import System
from core import metrics
from replication.models import Replica
from replication.services.documents import document_put
from tests.support.fast_accounts import fast_cli_application, person


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def scraper(db: Any, issue_token: Any) -> Client:
    fast_cli_application()
    client = Client()
    token = issue_token(person("prom", "acme", "reader"), "metrics")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def test_metrics_need_a_metrics_token_or_a_staff_session(db: Any, issue_token: Any) -> None:
    fast_cli_application()
    assert Client().get("/metrics").status_code == 401
    reader = person("rita", "acme", "reader")
    wrong = Client(HTTP_AUTHORIZATION=f"Bearer {issue_token(reader, 'read')}")
    response = wrong.get("/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "DG-1002"
    assert Client(HTTP_AUTHORIZATION="Bearer nope").get("/metrics").status_code == 401
    staff = person("sam", "acme", "admin")
    staff.is_staff = True
    staff.save()
    session = Client()
    session.force_login(staff)
    assert session.get("/metrics").status_code == 200


def test_database_gauges_count_online_replicas_and_their_lag(
    scraper: Client, collection: Any
) -> None:
    user = person("ann", "acme", "writer")
    for n in range(3):
        document_put(
            actor=System("test"), collection_id=collection.pk, doc_id=f"d{n}", body={}, origin="t"
        )
    Replica.objects.create(
        collection=collection, user=user, replica_id="a", online=True, last_acked_seq=1
    )
    Replica.objects.create(collection=collection, user=user, replica_id="b", online=False)
    found = samples(scraper.get("/metrics").content.decode())
    assert found[("datagate_replicas_online", ())] == 1
    assert found[("datagate_replica_lag_max", ())] == 2
    assert found[("datagate_documents", ())] == 3


def test_http_requests_errors_and_pushes_are_counted(
    scraper: Client, collection: Any, issue_token: Any
) -> None:
    def value(text: str, name: str, **labels: str) -> float:
        return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)

    before = scraper.get("/metrics").content.decode()
    writer = APIClient()
    writer.credentials(
        HTTP_AUTHORIZATION=f"Bearer {issue_token(person('wendy', 'acme', 'writer'), 'read write')}"
    )
    url = "/api/v1/tenants/acme/collections/notes/documents/a"
    assert writer.put(url, {"x": 1}, format="json").status_code == 200
    assert writer.put(url, {"x": 2}, format="json", headers={"If-Match": '"9"'}).status_code == 409
    after = scraper.get("/metrics").content.decode()
    pushed = "datagate_pushed_changes_total"
    assert value(after, pushed, outcome="applied") - value(before, pushed, outcome="applied") == 1
    errors = "datagate_errors_total"
    assert value(after, errors, code="DG-4009") - value(before, errors, code="DG-4009") == 1
    route = "api/v1/tenants/<str:tenant>/collections/<str:collection>/documents/<path:doc_id>"
    count = "datagate_http_request_duration_seconds_count"
    labels = {"method": "PUT", "route": route, "status": "2xx"}
    assert value(after, count, **labels) - value(before, count, **labels) == 1


def test_recording_functions_feed_the_registry(db: Any) -> None:
    def current(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0

    start = current("datagate_connections_total", endpoint="sync")
    metrics.connection_opened(endpoint="sync")
    assert current("datagate_connections_total", endpoint="sync") == start + 1
    sent = current("datagate_bytes_total", direction="out")
    metrics.bytes_record(direction="out", count=100)
    assert current("datagate_bytes_total", direction="out") == sent + 100


def test_gc_runs_are_counted_from_the_recorded_maintenance_runs(scraper: Client) -> None:
    from django.utils import timezone

    from replication.models import MaintenanceRun

    now = timezone.now()
    MaintenanceRun.objects.create(
        job="gc", trigger="command", started_at=now, finished_at=now, ok=True
    )
    MaintenanceRun.objects.create(
        job="gc", trigger="schedule", started_at=now, finished_at=now, ok=True
    )
    MaintenanceRun.objects.create(job="gc", trigger="schedule", started_at=now)  # still running
    found = samples(scraper.get("/metrics").content.decode())
    assert found[("datagate_maintenance_runs_total", (("job", "gc"), ("outcome", "ok")))] == 2
