"""Several processes (issue 21): two daphne processes on PostgreSQL and Redis, beside one.

For each N in `processes_replicas`, in the same run: N live replicas on one daphne process,
then N live replicas split between two daphne processes (the client processes alternate
between them; the writer talks to the first), while one writer changes `fanout_rate` documents
a second for `fanout_seconds` (bench/fanout.py). Deliveries per second and server CPU per
1,000 deliveries (both processes summed) stand beside the one-process figures. A change made
through one process reaches the other's replicas by the Redis doorbell, so this needs the
PostgreSQL + Redis pass; the SQLite pass (in-memory layer, one process) skips it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.fanout import _one_run
from bench.harness import PassContext, daphne, ratio
from bench.push_ingest import replication_route_missing

NAME = "processes"


def _run(ctx: PassContext, replicas: int, processes: int) -> dict[str, Any]:
    servers = [daphne(ctx, f"processes-{replicas}-{i}") for i in range(processes)]
    try:
        pids = [s.process.pid for s in servers if s.process is not None]
        return asyncio.run(
            _one_run(
                ctx,
                "datagate",
                replicas,
                servers[0].port,
                pids[0],
                receiver_ports=[s.port for s in servers],
                pids=pids,
                label=f"processes-{processes}-{replicas}",
            )
        )
    finally:
        for server in servers:
            server.stop()


def run(ctx: PassContext) -> dict[str, Any]:
    missing = replication_route_missing()
    if missing:
        return {"skipped": missing}
    if "REDIS_URL" not in ctx.server_env:
        return {"skipped": "two processes need the Redis doorbell (the PostgreSQL + Redis pass)"}
    runs: dict[str, Any] = {}
    headline = []
    for replicas in ctx.sizes.processes_replicas:
        entry: dict[str, Any] = {}
        for processes in (1, 2):
            try:
                entry[f"{processes}"] = _run(ctx, replicas, processes)
            except Exception as exc:
                entry[f"{processes}"] = {"error": f"{type(exc).__name__}: {exc}"}
        one, two = entry["1"], entry["2"]
        entry["ratios_two_to_one"] = {
            "deliveries_per_s": ratio(two.get("deliveries_per_s"), one.get("deliveries_per_s")),
            "cpu_per_delivery": ratio(
                two.get("server_cpu_ms_per_1k_deliveries"),
                one.get("server_cpu_ms_per_1k_deliveries"),
            ),
            "p99": ratio(
                two.get("latency", {}).get("p99_ms"), one.get("latency", {}).get("p99_ms")
            ),
        }
        runs[str(replicas)] = entry
        parts = []
        for count in ("1", "2"):
            got = entry[count]
            lat = got.get("latency", {})
            if lat.get("count"):
                parts.append(
                    f"{count} process(es) p99 {lat['p99_ms']} ms, "
                    f"{got['deliveries_per_s']}/s, "
                    f"{got.get('server_cpu_ms_per_1k_deliveries')} ms CPU/1k"
                )
            else:
                parts.append(f"{count}: {got.get('error', '-')}")
        headline.append(f"{replicas}: " + "; ".join(parts))
    return {
        "rate": ctx.sizes.fanout_rate,
        "seconds": ctx.sizes.fanout_seconds,
        "runs": runs,
        "headline": " | ".join(headline),
    }
