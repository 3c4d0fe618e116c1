"""Data views: a fresh replica catches up on a view of 1 document in `views_every` out of
`views_docs` (the issue: 1,000 out of 100,000 in under 0.5 s).

The collection is written straight through `batch_apply`; every `views_every`-th document is
an open task of the bench user, the rest are done or someone else's. The view is
`{"status": "open", "owner": "{username}"}`. Measured, same run: the server's read path for a
fresh view pull (`data_views.view_change_page` through SQL, paged like the websocket pull), the
same pages read as a Python scan of every change (what a filter without an index costs, the
CouchDB way), the whole collection through `change_page` (the floor for reading it all), and
the SDK's `AsyncReplica(view=...).sync()` against a real daphne, socket to stored markers.

Then live fan-out through a view (the issue: at most 10% more server CPU per delivery than the
whole collection): `views_fanout_replicas` live replicas, one writer at `fanout_rate` changes a
second for `fanout_seconds` (bench/fanout.py), each run on a fresh daphne, alternated
`views_fanout_rounds` times in the same pass: the replicas sync the whole collection, then a
view of it that every written document matches (`{"n": {"$gte": 0}}`, so both deliver the same
documents). The figure is the server process's CPU time over the runs divided by the documents
delivered (and, beside it, by the frames sent).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.harness import TENANT, USER, PassContext, daphne, make_document, ratio, running
from bench.push_ingest import _collection, replication_route_missing

NAME = "views"
SELECTOR = {"status": "open", "owner": "{username}"}
# Every document the fan-out writer writes has a numeric `n` >= 0 (bench.harness.make_document).
FANOUT_SELECTOR = {"n": {"$gte": 0}}


def _populate(collection_id: int, count: int, every: int) -> float:
    from accounts.access import System
    from replication.services.engine import batch_apply

    stamp = time.time_ns() // 1_000_000
    start = time.perf_counter()
    for index in range(0, count, 500):
        docs = []
        for i in range(index, min(index + 500, count)):
            doc = make_document(f"v-{i:07d}", i, "bench-seed", stamp)
            mine = i % every == 0
            doc["status"] = "open" if mine or i % 2 else "done"
            doc["owner"] = USER if mine else f"someone-{i % 7}"
            docs.append(doc)
        batch_apply(
            actor=System("bench seed"),
            collection_id=collection_id,
            feed={"changeSet": docs},
            origin="bench-seed",
        )
    return time.perf_counter() - start


def _view_read(collection_id: int, chunk: int, *, fresh: bool) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from accounts.models import Tenant
    from replication import data_views
    from replication.models import DataView

    view = DataView.objects.get(collection_id=collection_id, name="open-tasks")
    user = get_user_model().objects.get(username=USER)
    selector = data_views.selector_bound(
        view=view, user=user, tenant=Tenant.objects.get(slug=TENANT)
    )
    start = time.perf_counter()
    after, sent, pages = 0, 0, 0
    while True:
        page = data_views.view_change_page(
            collection_id=collection_id,
            selector=selector,
            after_seq=after,
            limit=chunk,
            fresh=fresh,
        )
        feed = data_views.view_feed(page.changes, selector=selector)
        sent += len(feed["changeSet"])
        pages += 1
        if page.covered <= after or page.covered >= page.head:
            break
        after = page.covered
    seconds = time.perf_counter() - start
    return {"documents": sent, "pages": pages, "seconds": round(seconds, 3)}


def _whole_read(collection_id: int, chunk: int) -> dict[str, Any]:
    from replication.selectors import change_page, feed_from_changes

    start = time.perf_counter()
    after, rows = 0, 0
    while True:
        page = change_page(collection_id=collection_id, after_seq=after, limit=chunk)
        feed_from_changes(page.changes)
        rows += len(page.changes)
        if page.covered <= after or page.covered >= page.head:
            break
        after = page.covered
    return {"rows": rows, "seconds": round(time.perf_counter() - start, 3)}


async def _sdk_view_sync(
    port: int, ctx: PassContext, collection: str, view: str = "open-tasks"
) -> dict[str, Any]:
    from datagate_replica import AsyncReplica

    path = ctx.work_dir / f"{collection}-{view}.sqlite3"
    start = time.perf_counter()
    replica = AsyncReplica(
        f"ws://127.0.0.1:{port}", TENANT, collection, ctx.token, path=path, view=view
    )
    try:
        report = await replica.sync()
        seconds = time.perf_counter() - start
        stored = len(replica.list())
    finally:
        await replica.close()
    return {"seconds": round(seconds, 3), "pulled": report.pulled, "stored": stored}


def _fanout(ctx: PassContext, *, through_view: bool) -> dict[str, Any]:
    """One live fan-out run (bench/fanout.py) on a fresh daphne, the receivers syncing either
    the whole collection or the view `everything` of it."""
    from accounts.access import System
    from accounts.models import Tenant
    from bench.fanout import _one_run
    from replication import data_views

    replicas = ctx.sizes.views_fanout_replicas
    name = f"views-fanout-{'view' if through_view else 'whole'}-{time.time_ns()}"
    _collection(name)
    if through_view:
        data_views.view_create(
            actor=System("bench"),
            tenant=Tenant.objects.get(slug=TENANT),
            collection_name=name,
            name="everything",
            selector=FANOUT_SELECTOR,
        )
    with running(daphne(ctx, name)) as server:
        assert server.process is not None
        return asyncio.run(
            _one_run(
                ctx,
                "datagate",
                replicas,
                server.port,
                server.process.pid,
                collection=name,
                receiver_view="everything" if through_view else None,
            )
        )


def _totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = sum(r.get("server_cpu_seconds") or 0.0 for r in runs)
    deliveries = sum(r.get("deliveries") or 0 for r in runs)
    frames = sum(r.get("frames") or 0 for r in runs)
    return {
        "server_cpu_seconds": round(cpu, 2),
        "deliveries": deliveries,
        "frames": frames,
        "server_cpu_ms_per_1k_deliveries": round(cpu * 1e6 / deliveries, 2) if deliveries else None,
        "server_cpu_ms_per_1k_frames": round(cpu * 1e6 / frames, 1) if frames else None,
    }


def fanout_compare(ctx: PassContext) -> dict[str, Any]:
    """Whole-collection fan-out and the same through a view, alternated in the same pass (so
    that a change of the machine's load weighs on both alike). The hub coalesces changes into
    fewer frames when replicas fall behind, so CPU per frame is given beside CPU per delivery."""
    whole: list[dict[str, Any]] = []
    view: list[dict[str, Any]] = []
    for _ in range(ctx.sizes.views_fanout_rounds):
        whole.append(_fanout(ctx, through_view=False))
        view.append(_fanout(ctx, through_view=True))
    whole_total, view_total = _totals(whole), _totals(view)
    return {
        "replicas": ctx.sizes.views_fanout_replicas,
        "whole_collection": whole_total,
        "view": view_total,
        "runs": {"whole_collection": whole, "view": view},
        "cpu_per_delivery_view_vs_whole": ratio(
            view_total["server_cpu_ms_per_1k_deliveries"],
            whole_total["server_cpu_ms_per_1k_deliveries"],
        ),
        "cpu_per_frame_view_vs_whole": ratio(
            view_total["server_cpu_ms_per_1k_frames"], whole_total["server_cpu_ms_per_1k_frames"]
        ),
    }


def run(ctx: PassContext) -> dict[str, Any]:
    from django.conf import settings

    from accounts.access import System
    from accounts.models import Tenant
    from replication import data_views

    count, every = ctx.sizes.views_docs, ctx.sizes.views_every
    name = f"views-{time.time_ns()}"
    collection_id = _collection(name)
    seed_seconds = _populate(collection_id, count, every)
    data_views.view_create(
        actor=System("bench"),
        tenant=Tenant.objects.get(slug=TENANT),
        collection_name=name,
        name="open-tasks",
        selector=SELECTOR,
    )
    data_views.view_create(
        actor=System("bench"),
        tenant=Tenant.objects.get(slug=TENANT),
        collection_name=name,
        name="nothing",
        selector={"status": "no such status"},
    )
    chunk = int(settings.DATAGATE["CHUNK_SIZE"])
    view_sql = _view_read(collection_id, chunk, fresh=True)
    python_scan = _view_read(collection_id, chunk, fresh=False)
    whole = _whole_read(collection_id, chunk)
    result: dict[str, Any] = {
        "docs": count,
        "in_view": view_sql["documents"],
        "seed_seconds": round(seed_seconds, 3),
        "server_view_read": view_sql,
        "baseline_python_scan": python_scan,
        "baseline_whole_collection": whole,
    }
    missing = replication_route_missing()
    if missing:
        result["skipped"] = missing
        return result
    with running(daphne(ctx, "views")) as server:
        empty = asyncio.run(_sdk_view_sync(server.port, ctx, name, "nothing"))
        sdk = asyncio.run(_sdk_view_sync(server.port, ctx, name))
    result["sdk_view_replica"] = sdk
    # The same SDK sync of an empty view: what a catch-up costs before any document (token,
    # Connect, the SDK's file, the SQL read finding nothing).
    result["baseline_sdk_empty_view"] = empty
    fanout = fanout_compare(ctx)
    result["fanout"] = fanout
    result["headline"] = (
        f"view of {view_sql['documents']} in {count}: SDK catch-up {sdk['seconds']} s"
        f" ({sdk['stored']} stored; empty view {empty['seconds']} s),"
        f" server read {view_sql['seconds']} s;"
        f" Python scan {python_scan['seconds']} s"
        f" ({ratio(python_scan['seconds'], view_sql['seconds'])}x),"
        f" whole collection {whole['seconds']} s;"
        f" live fan-out to {fanout['replicas']} replicas: server CPU per 1k deliveries"
        f" {fanout['view'].get('server_cpu_ms_per_1k_deliveries')} ms through the view,"
        f" {fanout['whole_collection'].get('server_cpu_ms_per_1k_deliveries')} ms whole"
        f" ({fanout['cpu_per_delivery_view_vs_whole']}x; per frame"
        f" {fanout['cpu_per_frame_view_vs_whole']}x)"
    )
    return result
