"""What a dashboard shows, shared by the page (first render) and the live websocket (updates).

Both render the same partial templates, so a live update replaces a fragment with exactly
what a reload would show.
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.http import QueryDict
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import Tenant
from console import selectors
from console.charts import bar_chart_svg
from console.forms import ReplicaFilterForm

REPLICAS_PAGE_SIZE = 50

LIVE_PARTS = {
    "collections": "console/_collections.html",
    "charts": "console/_charts.html",
    "online": "console/_online.html",
    "errors": "console/_recent_errors.html",
}


def dashboard_data(*, tenant: Tenant, collection_name: str | None = None) -> dict[str, Any]:
    now = timezone.now()
    collections = selectors.collection_stats(tenant=tenant, name=collection_name)
    ids = [c.pk for c in collections]
    rate = selectors.changes_per_second(collection_ids=ids, now=now)
    latency = selectors.feed_latency(collection_ids=ids, now=now)
    return {
        "tenant": tenant,
        "collection_name": collection_name,
        "collections": collections,
        "online_total": sum(c.replicas_online for c in collections),  # type: ignore[attr-defined]
        "changes_chart": bar_chart_svg(
            rate, title="Changes per second, per minute", unit="changes/s"
        ),
        "changes_last_minute": rate[-1] if rate else 0,
        "changes_hour_total": round(sum(rate) * 60),
        "latency_chart": bar_chart_svg(
            [p.avg_ms for p in latency],
            title="Feed latency (sent to acknowledged), average per minute",
            unit="ms",
            empty_text="no live feed acknowledged in the last hour",
        ),
        "latency_recent": next((p for p in reversed(latency) if p.acks), None),
        "online": selectors.replicas_online(tenant=tenant, collection_name=collection_name),
        "recent_errors": selectors.recent_errors(tenant=tenant, collection_name=collection_name),
        "updated_at": now,
    }


def dashboard_fragments(*, tenant: Tenant, collection_name: str | None = None) -> dict[str, str]:
    """Each live part of the dashboard, rendered."""
    context = dashboard_data(tenant=tenant, collection_name=collection_name)
    return {name: render_to_string(template, context) for name, template in LIVE_PARTS.items()}


def replicas_data(*, tenant: Tenant, params: QueryDict) -> dict[str, Any]:
    """The replicas page for these filters, sort and page: the same for the page and for its
    live updates, which render `console/_replica_rows.html` again with the page's query."""
    form = ReplicaFilterForm(params or None)
    data = form.cleaned_data if form.is_valid() else {}
    filters = selectors.ReplicaFilters(
        q=data.get("q") or "",
        collection=data.get("collection") or "",
        user=data.get("user") or "",
        online=data.get("online") or "",
        behind=bool(data.get("behind")),
        sort=data.get("sort") or "-last_seen",
    )
    page = Paginator(
        selectors.replica_list(tenant=tenant, filters=filters), REPLICAS_PAGE_SIZE
    ).get_page(params.get("page"))
    page.object_list = selectors.replicas_by_pk(list(page.object_list))
    next_sort = {
        key: (f"-{key}" if filters.sort == key else key) for key in selectors.REPLICA_SORTS
    }
    return {
        "tenant": tenant,
        "form": form if form.is_bound else ReplicaFilterForm(),
        "page": page,
        "sort": filters.sort,
        "next_sort": next_sort,
    }


def replicas_fragments(*, tenant: Tenant, params: QueryDict) -> dict[str, str]:
    context = replicas_data(tenant=tenant, params=params)
    return {"replicas": render_to_string("console/_replica_rows.html", context)}
