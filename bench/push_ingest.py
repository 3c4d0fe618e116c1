"""Push ingest: documents per second accepted from replicas pushing ~200-byte documents.

DataGate: one replica pushes `push_docs` documents in chunks of `push_chunk` (with
`push_window` chunks unacked), then four replicas push the same number between them, at once,
into one collection. Baseline, same run: the same documents written straight through
`replication.services.engine.batch_apply`, chunk by chunk, with no websocket in between.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.harness import (
    TENANT,
    PassContext,
    daphne,
    make_documents,
    profiled,
    ratio,
    running,
    split,
)
from bench.wire import Session

NAME = "push_ingest"


def replication_route_missing() -> str | None:
    from replication.routing import websocket_urlpatterns

    if not websocket_urlpatterns:
        return "this branch has no replication websocket route yet (issue 3)"
    return None


def _collection(name: str) -> int:
    from accounts.models import Tenant
    from replication.services.engine import collection_get_or_create

    tenant = Tenant.objects.get(slug=TENANT)
    return int(collection_get_or_create(tenant=tenant, name=name)[0].pk)


def _stored(collection_id: int) -> int:
    from replication.models import Document

    return Document.objects.filter(collection_id=collection_id).count()


def direct_baseline(ctx: PassContext, docs: list[dict[str, Any]]) -> dict[str, Any]:
    from accounts.access import System
    from replication.services.engine import batch_apply

    collection_id = _collection(f"push-direct-{time.time_ns()}")
    chunk = ctx.sizes.push_chunk
    # Warm up (first queries, statement caches) on another collection, as the server is warm.
    batch_apply(
        actor=System("bench baseline"),
        collection_id=_collection(f"push-warm-{time.time_ns()}"),
        feed={"changeSet": make_documents(chunk, prefix="warm", origin="bench-direct")},
        origin="bench-direct",
    )
    start = time.perf_counter()
    for index in range(0, len(docs), chunk):
        batch_apply(
            actor=System("bench baseline"),
            collection_id=collection_id,
            feed={"changeSet": docs[index : index + chunk]},
            origin="bench-direct",
        )
    seconds = time.perf_counter() - start
    return {
        "docs": len(docs),
        "seconds": round(seconds, 3),
        "docs_per_s": round(len(docs) / seconds),
        "stored": _stored(collection_id),
    }


async def _push(
    url: str, ctx: PassContext, collection: str, parts: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    sessions = [
        await Session.open(url, token=ctx.token, tenant=TENANT, collection=collection)
        for _ in parts
    ]
    try:
        for session in sessions:
            await session.connect(live=False)
        start = time.perf_counter()
        processed = await asyncio.gather(
            *(
                session.push(part, chunk=ctx.sizes.push_chunk, window=ctx.sizes.push_window)
                for session, part in zip(sessions, parts, strict=True)
            )
        )
        seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    total = sum(len(part) for part in parts)
    return {
        "replicas": len(parts),
        "docs": total,
        "processed": sum(processed),
        "seconds": round(seconds, 3),
        "docs_per_s": round(total / seconds),
    }


async def _sdk_push(
    port: int, ctx: PassContext, collection: str, docs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The SDK's replica: put every document locally, then one `sync()` (push, then pull)."""
    from datagate_replica import AsyncReplica

    path = ctx.work_dir / f"{collection}-sdk.sqlite3"
    replica = AsyncReplica(
        f"ws://127.0.0.1:{port}",
        TENANT,
        collection,
        ctx.token,
        path=path,
        push_chunk_size=ctx.sizes.push_chunk,
    )
    try:
        start = time.perf_counter()
        for doc in docs:
            replica.put(doc["_id"], {k: v for k, v in doc.items() if not k.startswith("_")})
        put_seconds = time.perf_counter() - start
        start = time.perf_counter()
        report = await replica.sync()
        sync_seconds = time.perf_counter() - start
    finally:
        await replica.close()
    return {
        "docs": len(docs),
        "local_puts_per_s": round(len(docs) / put_seconds),
        "pushed": report.pushed,
        "pulled_back": report.pulled,
        "sync_seconds": round(sync_seconds, 3),
        "docs_per_s": round(len(docs) / sync_seconds),
    }


def run(ctx: PassContext) -> dict[str, Any]:
    missing = replication_route_missing()
    count = ctx.sizes.push_docs
    baseline = direct_baseline(ctx, make_documents(count, prefix="direct", origin="bench-direct"))
    result: dict[str, Any] = {
        "chunk": ctx.sizes.push_chunk,
        "window": ctx.sizes.push_window,
        "baseline_batch_apply": baseline,
    }
    if missing:
        result["skipped"] = missing
        return result
    with running(daphne(ctx, "push")) as server:
        one_collection = f"push-one-{time.time_ns()}"
        docs = make_documents(count, prefix="one", origin="bench-one")
        url = ctx.collection_url(server.port, one_collection)
        with profiled(ctx, server.process.pid, "push-one", 8):
            one = asyncio.run(_push(url, ctx, one_collection, [docs]))
        one["stored"] = _stored(_collection(one_collection))
        four_collection = f"push-four-{time.time_ns()}"
        docs = make_documents(count, prefix="four", origin="bench-four")
        parts, offset = [], 0
        for size in split(count, 4):
            parts.append(docs[offset : offset + size])
            offset += size
        url = ctx.collection_url(server.port, four_collection)
        with profiled(ctx, server.process.pid, "push-four", 8):
            four = asyncio.run(_push(url, ctx, four_collection, parts))
        four["stored"] = _stored(_collection(four_collection))
        sdk_collection = f"push-sdk-{time.time_ns()}"
        try:
            sdk = asyncio.run(
                _sdk_push(
                    server.port,
                    ctx,
                    sdk_collection,
                    make_documents(count, prefix="sdk", origin="bench-sdk"),
                )
            )
            sdk["stored"] = _stored(_collection(sdk_collection))
            sdk["ratio_to_baseline"] = ratio(sdk["docs_per_s"], baseline["docs_per_s"])
        except Exception as exc:
            sdk = {"error": f"{type(exc).__name__}: {exc}"}
    result["sdk_replica"] = sdk
    one["ratio_to_baseline"] = ratio(one["docs_per_s"], baseline["docs_per_s"])
    four["ratio_to_baseline"] = ratio(four["docs_per_s"], baseline["docs_per_s"])
    result["one_replica"] = one
    result["four_replicas"] = four
    result["headline"] = (
        f"one replica {one['docs_per_s']} docs/s, four {four['docs_per_s']} docs/s, "
        f"batch_apply {baseline['docs_per_s']} docs/s (ratio {one['ratio_to_baseline']})"
    )
    return result
