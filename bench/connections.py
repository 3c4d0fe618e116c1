"""Connections: idle live replicas one daphne process holds, and memory per connection.

`connections` replicas connect (spread over `client_processes` processes, a bounded number of
connects at a time), go live and then stay idle for `connections_hold` seconds. The server's
resident memory (VmRSS) is read after a warm-up connection and again with everything
connected and after the hold; memory per connection is the difference over the connections
held. Baseline, same run: the same number of sockets on a bare Channels consumer on daphne
that joins one group per connection (`bench/bare_channels.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.harness import (
    TENANT,
    PassContext,
    daphne,
    profiled,
    ratio,
    split,
    start_clients,
    tree_rss_bytes,
)
from bench.push_ingest import replication_route_missing
from bench.wire import live_session, open_socket

NAME = "connections"
MIB = 1024 * 1024
# Seconds each client process may spend connecting; what connected by then is what is held.
CONNECT_BUDGET = 300


async def _warm_up(kind: str, url: str, ctx: PassContext, collection: str) -> None:
    """One connection in and out, so imports, caches and the first DB connection are paid."""
    if kind == "datagate":
        session = await live_session(url, token=ctx.token, tenant=TENANT, collection=collection)
        await session.close()
    else:
        socket = await open_socket(url)
        await socket.close()


async def _hold(
    ctx: PassContext,
    kind: str,
    port: int,
    pid: int,
    *,
    count: int | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Connect `count` (default `connections`) replicas, hold them idle, measure the server
    (`pid` and its child processes)."""
    sizes = ctx.sizes
    asked = count or sizes.connections
    stamp = time.time_ns()
    collection = f"idle-{stamp}"
    if kind == "datagate":
        url = ctx.collection_url(port, collection)
    else:
        url = f"ws://127.0.0.1:{port}/bench/fanout/"
    await _warm_up(kind, url, ctx, collection)
    await asyncio.sleep(1)
    rss_idle = tree_rss_bytes(pid)
    configs = [
        {
            "kind": "datagate" if kind == "datagate" else "bare",
            "url": url,
            "count": share,
            "token": ctx.token,
            "tenant": TENANT,
            "collection": collection,
            "prefix": f"idle{index}-{stamp}",
            "concurrency": 20,
            "connect_timeout": CONNECT_BUDGET,
            "deadline": 900,
            "record": False,
        }
        for index, share in enumerate(split(asked, sizes.client_processes))
    ]
    started = time.perf_counter()
    with profiled(ctx, pid, label or f"connect-{kind}", 10):
        clients, ready = await start_clients("receive", configs, ready_timeout=700)
    try:
        connect_seconds = time.perf_counter() - started
        connected = sum(r["connected"] for r in ready)
        rss_connected = tree_rss_bytes(pid)
        await asyncio.sleep(sizes.connections_hold)
        for client in clients:
            await client.command("count")
        counts = await asyncio.gather(*(client.event(60) for client in clients))
        closed = sum(c["closed"] for c in counts)
        rss_held = tree_rss_bytes(pid)
        for client in clients:
            await client.command("stop")
        results = await asyncio.gather(*(client.event(60) for client in clients))
    finally:
        await asyncio.gather(*(client.stop() for client in clients))
    held = connected - closed
    per_connection = (rss_held - rss_idle) / held if held else None
    return {
        "asked": asked,
        "connected": connected,
        "failed": sum(r["failed"] for r in ready),
        "closed_while_idle": closed,
        "held": held,
        "hold_seconds": sizes.connections_hold,
        "connect_seconds": round(connect_seconds, 2),
        "connects_per_s": round(connected / connect_seconds) if connect_seconds else None,
        "rss_idle_mib": round(rss_idle / MIB, 1),
        "rss_connected_mib": round(rss_connected / MIB, 1),
        "rss_held_mib": round(rss_held / MIB, 1),
        "kib_per_connection": round(per_connection / 1024, 1) if per_connection else None,
        "errors": [e for r in ready + results for e in r["errors"]][:5],
    }


def run(ctx: PassContext) -> dict[str, Any]:
    missing = replication_route_missing()
    result: dict[str, Any] = {}
    for kind in ("datagate", "bare_channels"):
        if kind == "datagate" and missing:
            result[kind] = {"skipped": missing}
            continue
        application = (
            "bench.bare_channels:application"
            if kind == "bare_channels"
            else "datagate_site.asgi:application"
        )
        server = daphne(ctx, f"idle-{kind}", application)
        try:
            assert server.process is not None
            result[kind] = asyncio.run(_hold(ctx, kind, server.port, server.process.pid))
        except Exception as exc:
            result[kind] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            server.stop()
    dg, ch = result.get("datagate", {}), result.get("bare_channels", {})
    result["ratio_memory_per_connection_vs_bare_channels"] = ratio(
        dg.get("kib_per_connection"), ch.get("kib_per_connection")
    )
    parts = [
        f"{kind} held {entry['held']} at {entry['rss_held_mib']} MiB "
        f"({entry['kib_per_connection']} KiB/conn)"
        for kind, entry in result.items()
        if isinstance(entry, dict) and "held" in entry
    ]
    result["headline"] = "; ".join(parts)
    return result
