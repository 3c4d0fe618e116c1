"""The ASGI server lever (issue 21): the same application under daphne, uvicorn and granian.

For each server (tests/support/server_processes.py SERVERS; uvicorn and granian come with the
`servers` extra, which `make bench` installs), in the same run and with the same clients:

- fan-out: `servers_replicas` live replicas while one writer changes `fanout_rate` documents a
  second for `fanout_seconds` (bench/fanout.py): p50/p99 from write to arrival, deliveries per
  second, server CPU per 1,000 deliveries;
- connects: `servers_connections` replicas connect, pull and go live (bench/connections.py):
  connects per second and memory per idle replica.

Ratios are to daphne, the default server, in the same run. The server's CPU and memory include
its child processes (granian serves from a worker process). With --profile, daphne's connects
are sampled with py-spy (the connect-path profile in RESULTS.md).
"""

from __future__ import annotations

import asyncio
from importlib.util import find_spec
from typing import Any

from bench.connections import _hold
from bench.fanout import _one_run
from bench.harness import PassContext, asgi_server, ratio
from bench.push_ingest import replication_route_missing

NAME = "servers"
KINDS = ("daphne", "uvicorn", "granian")


def missing_server(kind: str) -> str | None:
    if kind != "daphne" and find_spec(kind) is None:
        return f"{kind} is not installed (pip install -e '.[servers]'; `make bench` does it)"
    return None


def _measure(ctx: PassContext, kind: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    replicas = ctx.sizes.servers_replicas
    server = asgi_server(ctx, kind, f"servers-fanout-{kind}")
    try:
        assert server.process is not None
        result["fanout"] = asyncio.run(
            _one_run(
                ctx,
                "datagate",
                replicas,
                server.port,
                server.process.pid,
                label=f"servers-fanout-{kind}-{replicas}",
            )
        )
    except Exception as exc:
        result["fanout"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        server.stop()
    server = asgi_server(ctx, kind, f"servers-connect-{kind}")
    try:
        assert server.process is not None
        result["connects"] = asyncio.run(
            _hold(
                ctx,
                "datagate",
                server.port,
                server.process.pid,
                count=ctx.sizes.servers_connections,
                label=f"servers-connect-{kind}",
            )
        )
    except Exception as exc:
        result["connects"] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        server.stop()
    return result


def run(ctx: PassContext) -> dict[str, Any]:
    missing = replication_route_missing()
    if missing:
        return {"skipped": missing}
    result: dict[str, Any] = {
        "replicas": ctx.sizes.servers_replicas,
        "rate": ctx.sizes.fanout_rate,
        "connections": ctx.sizes.servers_connections,
    }
    for kind in KINDS:
        reason = missing_server(kind)
        result[kind] = {"skipped": reason} if reason else _measure(ctx, kind)
    base = result["daphne"]
    headline = []
    for kind in KINDS:
        entry = result[kind]
        fan, con = entry.get("fanout", {}), entry.get("connects", {})
        if kind != "daphne":
            entry["ratios_to_daphne"] = {
                "p99": ratio(
                    fan.get("latency", {}).get("p99_ms"),
                    base.get("fanout", {}).get("latency", {}).get("p99_ms"),
                ),
                "cpu_per_delivery": ratio(
                    fan.get("server_cpu_ms_per_1k_deliveries"),
                    base.get("fanout", {}).get("server_cpu_ms_per_1k_deliveries"),
                ),
                "connects_per_s": ratio(
                    con.get("connects_per_s"), base.get("connects", {}).get("connects_per_s")
                ),
            }
        lat = fan.get("latency", {})
        if lat.get("count"):
            headline.append(
                f"{kind} p99 {lat['p99_ms']} ms, "
                f"{fan.get('server_cpu_ms_per_1k_deliveries')} ms CPU/1k, "
                f"{con.get('connects_per_s')} connects/s"
            )
        else:
            headline.append(f"{kind}: {entry.get('skipped') or fan.get('error') or '-'}")
    result["headline"] = "; ".join(headline)
    return result
