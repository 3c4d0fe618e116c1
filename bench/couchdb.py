"""PouchDB against DataGate's CouchDB door, beside pouchdb-server, in the same run.

The same PouchDB 9 workload (bench/pouchdb/workload.js, one Node process per part) runs
against DataGate (`/couchdb/bench/...` on a fresh daphne of this pass) and against
pouchdb-server 4.2 (npm, `--in-memory`): a push of `couch_push_docs` documents of ~200 bytes,
a catch-up of `couch_catchup_docs` by a fresh PouchDB, and live replication to
`couch_live_replicas` PouchDBs while one writer PUTs `couch_live_rate` documents a second
(latency = arrival at a replica minus the writer's clock just before its PUT; one Node clock).
PouchDB's default options (batch_size 100) on both. The client process shares the cores with
either server, so the figures are comparable with each other, not with other machines.

A third column is the client floor: the same workload against `bench/pouchdb/stub.js`, a Node
stub that answers every request from answers serialised before they are asked (no storage
work). Its time is what PouchDB itself needs here; a server's ratio to pouchdb-server can be
no better than pouchdb-server's time over the floor's (`*_best_possible`).

Needs Node and `npm ci` in bench/pouchdb (`make bench-couchdb` does it); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness import TENANT, PassContext, daphne, load, profiled, ratio, running
from tests.support.server_processes import free_port

NAME = "couchdb"
HERE = Path(__file__).resolve().parent / "pouchdb"
WORKLOAD = HERE / "workload.js"
POUCHDB_SERVER = HERE / "node_modules" / ".bin" / "pouchdb-server"
STUB = HERE / "stub.js"
# With --profile, how long py-spy samples DataGate in each part (the catch-up's includes its seed).
PROFILE_SECONDS = {"push": 13.0, "catchup": 26.0, "live": 12.0}


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "Node is not installed"
    if not POUCHDB_SERVER.exists():
        return "bench/pouchdb is not installed (make bench-couchdb runs npm ci there)"
    return None


def _workload(part: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    completed = subprocess.run(
        ["node", str(WORKLOAD), part, json.dumps(options)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if completed.returncode != 0 and "error" not in result:
        result["error"] = completed.stderr[-2000:] or f"exit {completed.returncode}"
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


class NodeServer:
    """A Node server of this bench in its own directory (pouchdb-server writes its config and
    log there), on a free port."""

    def __init__(self, work_dir: Path, name: str, command: list[str]) -> None:
        self.port = free_port()
        self.directory = work_dir / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in command],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not start within 30 s")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def pouchdb_server(work_dir: Path) -> NodeServer:
    """pouchdb-server in memory."""
    command = [str(POUCHDB_SERVER), "--in-memory", "--port", "{port}", "--no-stdout-logs"]
    return NodeServer(work_dir, "pouchdb-server", command)


def floor_stub(work_dir: Path) -> NodeServer:
    """The client floor's stub (bench/pouchdb/stub.js)."""
    return NodeServer(work_dir, "floor-stub", ["node", str(STUB), "{port}"])


def _parts(ctx: PassContext) -> list[tuple[str, str, dict[str, Any]]]:
    sizes = ctx.sizes
    return [
        ("push", "push", {"docs": sizes.couch_push_docs, "batchSize": 100}),
        ("catchup", "catch_up", {"docs": sizes.couch_catchup_docs, "batchSize": 100}),
        (
            "live",
            "live",
            {
                "replicas": sizes.couch_live_replicas,
                "rate": sizes.couch_live_rate,
                "seconds": sizes.couch_live_seconds,
            },
        ),
    ]


def run(ctx: PassContext) -> dict[str, Any]:
    missing = _missing()
    if missing:
        return {"skipped": missing}
    timeout = 1800.0
    result: dict[str, Any] = {}
    with (
        running(daphne(ctx, "couchdb")) as server,
        running(pouchdb_server(ctx.work_dir)) as peer,
        running(floor_stub(ctx.work_dir)) as stub,
    ):
        for part, key, options in _parts(ctx):
            entry: dict[str, Any] = {}
            for label, url, token in (
                ("datagate", f"{server.http_url}/couchdb/{TENANT}/couch{part}", ctx.token),
                ("pouchdb_server", f"{peer.http_url}/couch{part}", None),
                ("client_floor", f"{stub.http_url}/couch{part}", None),
            ):
                entry[f"{label}_load_before"] = load()
                seconds = PROFILE_SECONDS[part] if label == "datagate" else 0.0
                with (
                    profiled(ctx, server.process.pid, f"couchdb-{part}", seconds)
                    if seconds
                    else contextlib.nullcontext()
                ):
                    entry[label] = _workload(part, {**options, "url": url, "token": token}, timeout)
            result[key] = entry
    push, catch_up, live = result["push"], result["catch_up"], result["live"]
    push["ratio"] = ratio(
        push["datagate"].get("docs_per_s"), push["pouchdb_server"].get("docs_per_s")
    )
    catch_up["ratio"] = ratio(
        catch_up["pouchdb_server"].get("seconds"), catch_up["datagate"].get("seconds")
    )
    live["ratio_p50"] = ratio(live["pouchdb_server"].get("p50_ms"), live["datagate"].get("p50_ms"))
    live["ratio_p99"] = ratio(live["pouchdb_server"].get("p99_ms"), live["datagate"].get("p99_ms"))
    # The best ratio any server could reach: pouchdb-server's figure over the client floor's.
    push["best_possible"] = ratio(
        push["client_floor"].get("docs_per_s"), push["pouchdb_server"].get("docs_per_s")
    )
    catch_up["best_possible"] = ratio(
        catch_up["pouchdb_server"].get("seconds"), catch_up["client_floor"].get("seconds")
    )
    live["best_possible_p50"] = ratio(
        live["pouchdb_server"].get("p50_ms"), live["client_floor"].get("p50_ms")
    )
    result["headline"] = (
        f"push {push['datagate'].get('docs_per_s', 0):,.0f} vs "
        f"{push['pouchdb_server'].get('docs_per_s', 0):,.0f} docs/s; catch-up "
        f"{catch_up['datagate'].get('seconds', 0):.1f} vs "
        f"{catch_up['pouchdb_server'].get('seconds', 0):.1f} s; live p50 "
        f"{live['datagate'].get('p50_ms')} vs {live['pouchdb_server'].get('p50_ms')} ms "
        f"(client floor: push {push['client_floor'].get('docs_per_s', 0):,.0f} docs/s, "
        f"catch-up {catch_up['client_floor'].get('seconds', 0):.1f} s, "
        f"live p50 {live['client_floor'].get('p50_ms')} ms)"
    )
    return result
