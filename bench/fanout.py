"""Live fan-out: one writer changes `fanout_rate` documents a second while N replicas are live.

For each N in `fanout_replicas`, three servers get the same load in the same run:

- `datagate`: a real DataGate daphne; the receivers are live replicas (connect, pull, then
  ack every feed); the writer is a live replica sending one change per feed;
- `bare_channels`: a bare Channels consumer on daphne (`bench/bare_channels.py`) that group-sends
  every frame the writer sends through the same channel layer, each member forwarding it;
- `bare_websockets`: a bare `websockets` server broadcasting every frame.

The writer stamps each document with `t`, the wall-clock time (microseconds) just before it sends
it; a receiver records, for every document that arrives, its arrival time minus `t`: the latency
from write to arrival, which includes the commit. Receivers are the lightweight clients of
`bench/clients.py`, spread over `client_processes` processes. Deliveries per second count the
documents that arrived at all receivers over the window from the first write to the last
arrival; feeds per second count websocket frames. The server's CPU time over the same window is
recorded too (CPU per 1,000 deliveries is the capacity figure when nothing saturates).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import websockets

from bench.harness import (
    ROOT,
    TENANT,
    ClientProcess,
    PassContext,
    daphne,
    latency_summary,
    make_document,
    profiled,
    ratio,
    split,
    start_clients,
    tree_cpu_seconds,
)
from bench.push_ingest import replication_route_missing
from bench.wire import FEED, FEED_ACK, Session, live_session, open_socket, receipt_for

NAME = "fanout"
KINDS = ("datagate", "bare_channels", "bare_websockets")


def kinds() -> tuple[str, ...]:
    """The servers this run measures: all of `KINDS`, or those `BENCH_FANOUT_KINDS` names
    (comma-separated), e.g. `datagate,bare_websockets` for an A/B run without bare Channels."""
    wanted = os.environ.get("BENCH_FANOUT_KINDS", "")
    chosen = tuple(kind for kind in KINDS if kind in wanted.split(","))
    return chosen or KINDS


class BareWebsocketsServer:
    """`python -m bench.bare_websockets PORT` as a process."""

    def __init__(self, ctx: PassContext) -> None:
        from tests.support.server_processes import free_port

        self.port = free_port()
        self.log = (ctx.work_dir / f"bare-websockets-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_websockets", str(self.port)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("bare websockets server exited early")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("bare websockets server did not start within 30 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


class Writer:
    """Sends one change per frame at a fixed rate; for DataGate also reads and acks."""

    def __init__(self, session: Session, *, datagate: bool) -> None:
        self.session = session
        self.datagate = datagate
        self.sent_at: dict[str, float] = {}
        self.ack_ms: list[float] = []
        self.reader: asyncio.Task[None] | None = None
        if datagate:
            self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.session.socket:
                message = json.loads(frame)
                kind = message["header"]["messageType"]
                if kind == FEED_ACK:
                    sent = self.sent_at.pop(message["header"].get("correlationId") or "", None)
                    if sent is not None:
                        self.ack_ms.append((time.perf_counter() - sent) * 1000)
                elif kind == FEED:
                    await self.session.send(
                        self.session.message(
                            FEED_ACK, message["header"]["id"], receipt=receipt_for(message["feed"])
                        )
                    )

    async def write(self, *, count: int, rate: int, prefix: str) -> float:
        """Send `count` changes at `rate` per second; return the wall time (µs) of the first."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        first_us = time.time_ns() // 1000
        for index in range(count):
            due = start + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            doc = make_document(f"{prefix}-{index:06d}", index, self.session.origin, 0)
            doc["_modified"] = time.time_ns() // 1_000_000
            doc["t"] = time.time_ns() // 1000
            message = self.session.message(FEED, feed={"changeSet": [doc], "tombstoneMap": {}})
            self.sent_at[message["header"]["id"]] = time.perf_counter()
            await self.session.send(message)
        return first_us

    async def close(self) -> None:
        await self.session.close()
        if self.reader is not None:
            self.reader.cancel()


async def _drain(clients: list[ClientProcess], expected: int, seconds: float) -> None:
    """Poll the receivers until every expected document arrived, or progress stops."""
    deadline = time.monotonic() + seconds
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        for client in clients:
            await client.command("count")
        counts = await asyncio.gather(*(client.event(30) for client in clients))
        total = sum(c["docs"] for c in counts)
        if total >= expected:
            return
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > 5:
            return
        await asyncio.sleep(0.25)


async def _one_run(
    ctx: PassContext,
    kind: str,
    replicas: int,
    port: int,
    pid: int,
    *,
    receiver_ports: list[int] | None = None,
    pids: list[int] | None = None,
    label: str | None = None,
    collection: str | None = None,
    receiver_view: str | None = None,
) -> dict[str, Any]:
    """One fan-out run. The writer talks to `port`; the receivers' client processes are spread
    over `receiver_ports` (default: `port`); the CPU counted is that of `pids` (default: `pid`)
    and their child processes. With `receiver_view` (a data view already defined on
    `collection`), the receivers sync that view instead of the whole collection
    (bench/views.py); the writer always writes to the collection."""
    sizes = ctx.sizes
    stamp = time.time_ns()
    collection = collection or f"fanout-{replicas}-{stamp}"
    ports = receiver_ports or [port]
    measured = pids or [pid]
    writer_url = ctx.collection_url(port, collection)
    if kind == "datagate":
        receiver_url = writer_url
        if receiver_view is not None:
            receiver_url += f"views/{receiver_view}/"
    elif kind == "bare_channels":
        receiver_url = f"ws://127.0.0.1:{port}/bench/fanout/"
    else:
        receiver_url = f"ws://127.0.0.1:{port}/fanout"
    configs = [
        {
            "kind": "datagate" if kind == "datagate" else "bare",
            "url": receiver_url.replace(f":{port}/", f":{ports[index % len(ports)]}/"),
            "count": count,
            "token": ctx.token,
            "tenant": TENANT,
            "collection": collection,
            "prefix": f"rx{index}-{stamp}",
            "concurrency": 10,
            "deadline": 900,
        }
        for index, count in enumerate(split(replicas, sizes.client_processes))
    ]
    connect_started = time.perf_counter()
    clients, ready = await start_clients("receive", configs, ready_timeout=600)
    connect_seconds = time.perf_counter() - connect_started
    connected = sum(r["connected"] for r in ready)
    try:
        if kind == "datagate":
            session = await live_session(
                writer_url, token=ctx.token, tenant=TENANT, collection=collection
            )
        else:
            path = "bench/publish/" if kind == "bare_channels" else "publish"
            socket = await open_socket(f"ws://127.0.0.1:{port}/{path}")
            session = Session(socket, token=ctx.token, tenant=TENANT, collection=collection)
        writer = Writer(session, datagate=kind == "datagate")
        changes = int(sizes.fanout_rate * sizes.fanout_seconds)
        cpu_before = sum(tree_cpu_seconds(p) for p in measured)
        with profiled(ctx, pid, label or f"fanout-{kind}-{replicas}", sizes.fanout_seconds):
            first_us = await writer.write(count=changes, rate=sizes.fanout_rate, prefix=collection)
        write_seconds = time.time_ns() / 1e9 - first_us / 1e6
        expected = connected * changes
        await _drain(clients, expected, 60)
        cpu_used = sum(tree_cpu_seconds(p) for p in measured) - cpu_before
        for client in clients:
            await client.command("stop")
        results = []
        for client in clients:
            event = await client.event(60)
            while event.get("event") != "result":
                event = await client.event(60)
            results.append(event)
        await writer.close()
    finally:
        await asyncio.gather(*(client.stop() for client in clients))
    latencies = [us / 1000 for r in results for us in r["latencies_us"]]
    docs = sum(r["docs"] for r in results)
    frames = sum(r["frames"] for r in results)
    last_arrival = max((r["last_arrival_us"] for r in results), default=0)
    window = max(1e-6, (last_arrival - first_us) / 1e6) if last_arrival else None
    errors = [e for r in ready + results for e in r["errors"]][:5]
    return {
        "replicas": replicas,
        "connected": connected,
        "connect_seconds": round(connect_seconds, 2),
        "changes": changes,
        "write_seconds": round(write_seconds, 3),
        "expected_deliveries": expected,
        "deliveries": docs,
        "frames": frames,
        "acks": sum(r.get("acks", 0) for r in results),
        "closed_during_run": sum(r["closed"] for r in results),
        "window_seconds": round(window, 3) if window else None,
        "deliveries_per_s": round(docs / window) if window else 0,
        "feeds_per_s": round(frames / window) if window else 0,
        "latency": latency_summary(latencies),
        "writer_ack": latency_summary(writer.ack_ms) if writer.ack_ms else None,
        "server_cpu_seconds": round(cpu_used, 2),
        "server_cpu_ms_per_1k_deliveries": round(cpu_used * 1e6 / docs, 1) if docs else None,
        "errors": errors,
    }


def _run_kind(ctx: PassContext, kind: str, replicas: int) -> dict[str, Any]:
    if kind == "bare_websockets":
        bare = BareWebsocketsServer(ctx)
        try:
            return asyncio.run(_one_run(ctx, kind, replicas, bare.port, bare.process.pid))
        finally:
            bare.stop()
    application = (
        "bench.bare_channels:application"
        if kind == "bare_channels"
        else "datagate_site.asgi:application"
    )
    server = daphne(ctx, f"fanout-{kind}-{replicas}", application)
    try:
        assert server.process is not None
        return asyncio.run(_one_run(ctx, kind, replicas, server.port, server.process.pid))
    finally:
        server.stop()


def run(ctx: PassContext) -> dict[str, Any]:
    missing = replication_route_missing()
    runs: dict[str, Any] = {}
    headline = []
    for replicas in ctx.sizes.fanout_replicas:
        entry: dict[str, Any] = {}
        for kind in kinds():
            if kind == "datagate" and missing:
                entry[kind] = {"skipped": missing}
                continue
            try:
                entry[kind] = _run_kind(ctx, kind, replicas)
            except Exception as exc:
                entry[kind] = {"error": f"{type(exc).__name__}: {exc}"}
        dg, ch, ws = (entry.get(k, {}) for k in KINDS)
        entry["ratios"] = {
            "deliveries_per_s_vs_bare_channels": ratio(
                dg.get("deliveries_per_s"), ch.get("deliveries_per_s")
            ),
            "feeds_per_s_vs_bare_channels": ratio(dg.get("feeds_per_s"), ch.get("feeds_per_s")),
            "deliveries_per_s_vs_bare_websockets": ratio(
                dg.get("deliveries_per_s"), ws.get("deliveries_per_s")
            ),
            "cpu_per_delivery_vs_bare_channels": ratio(
                dg.get("server_cpu_ms_per_1k_deliveries"),
                ch.get("server_cpu_ms_per_1k_deliveries"),
            ),
        }
        runs[str(replicas)] = entry
        parts = []
        for kind in kinds():
            lat = entry[kind].get("latency", {})
            if lat.get("count"):
                parts.append(f"{kind} p99 {lat['p99_ms']} ms {entry[kind]['deliveries_per_s']}/s")
        headline.append(f"{replicas}: " + ", ".join(parts))
    result: dict[str, Any] = {
        "rate": ctx.sizes.fanout_rate,
        "seconds": ctx.sizes.fanout_seconds,
        "runs": runs,
        "headline": "; ".join(headline),
    }
    if missing:
        result["datagate_skipped"] = missing
    return result
