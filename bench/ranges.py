"""Range checks (issue 20): repair by difference after a restore, verify, and the write cost.

1. A collection of `ranges_docs` documents (~200 bytes each). An SDK replica catches up from
   zero: the **full catch-up** (time, and bytes over the websocket both ways).
2. The collection is exported; then `ranges_differences` documents change on the server and
   the replica syncs them. The export is imported again: the server went back in time and
   lost those changes.
3. Baseline, same run: a copy of the replica's file syncs *without* range checks
   (`ranges=False`): the reset snapshot (the whole collection), then a second session pushes
   back what the restore lost. The server is restored from the export again.
4. The replica syncs *with* range checks: it finds the differences, pushes them back, and
   pulls nothing else. Target: < 2% of the full catch-up's bytes, < 20% of its time.
5. `verify` of the now equal replica: wall time and the server process's CPU time during it
   (target < 100 ms of server time).
6. The write cost of keeping the summaries: `batch_apply` CPU per document, inserts and
   updates of 500-document chunks, with the summary upkeep on and (monkeypatched away in
   this process only) off, alternating, same run.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import (
    TENANT,
    PassContext,
    cpu_seconds,
    daphne,
    make_documents,
    ratio,
    running,
)
from bench.push_ingest import _collection, replication_route_missing

NAME = "ranges"


class WireBytes:
    """Bytes of every frame the SDK sends and receives in this process."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    @property
    def total(self) -> int:
        return self.sent + self.received


@contextmanager
def counted() -> Iterator[WireBytes]:
    from websockets.asyncio.client import ClientConnection

    tally = WireBytes()
    send, recv = ClientConnection.send, ClientConnection.recv

    async def counting_send(self: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        tally.sent += len(message.encode() if isinstance(message, str) else message)
        return await send(self, message, *args, **kwargs)

    async def counting_recv(self: Any, *args: Any, **kwargs: Any) -> Any:
        frame = await recv(self, *args, **kwargs)
        tally.received += len(frame.encode() if isinstance(frame, str) else frame)
        return frame

    ClientConnection.send = counting_send  # type: ignore[method-assign]
    ClientConnection.recv = counting_recv  # type: ignore[method-assign]
    try:
        yield tally
    finally:
        ClientConnection.send = send  # type: ignore[method-assign]
        ClientConnection.recv = recv  # type: ignore[method-assign]


def _write(collection_id: int, docs: list[dict[str, Any]]) -> None:
    from accounts.access import System
    from replication.services.engine import batch_apply

    for index in range(0, len(docs), 500):
        batch_apply(
            actor=System("bench ranges"),
            collection_id=collection_id,
            feed={"changeSet": docs[index : index + 500]},
            origin="bench-server",
        )


def _export(collection_id: int) -> str:
    from replication.transfer import collection_export

    out = io.StringIO()
    collection_export(collection_id=collection_id, out=out)
    return out.getvalue()


def _import(name: str, text: str) -> None:
    from accounts.access import System
    from accounts.models import Tenant
    from replication.transfer import collection_import

    collection_import(
        actor=System("bench ranges"),
        tenant=Tenant.objects.get(slug=TENANT),
        name=name,
        source=io.StringIO(text),
    )


async def _sync(
    port: int, ctx: PassContext, name: str, path: Path, **options: Any
) -> dict[str, Any]:
    from datagate_replica import AsyncReplica

    replica = AsyncReplica(f"ws://127.0.0.1:{port}", TENANT, name, ctx.token, path=path, **options)
    try:
        with counted() as tally:
            start = time.perf_counter()
            report = await replica.sync()
            seconds = time.perf_counter() - start
    finally:
        await replica.close()
    return {
        "seconds": round(seconds, 3),
        "bytes": tally.total,
        "bytes_sent": tally.sent,
        "bytes_received": tally.received,
        "pulled": report.pulled,
        "pushed": report.pushed,
        "reset": report.reset,
        "repaired": report.repaired,
        "fetched": report.fetched,
        "range_rounds": report.range_rounds,
    }


async def _verify(port: int, ctx: PassContext, name: str, path: Path, pid: int) -> dict[str, Any]:
    from datagate_replica import AsyncReplica

    replica = AsyncReplica(f"ws://127.0.0.1:{port}", TENANT, name, ctx.token, path=path)
    try:
        runs = []
        for _ in range(3):
            cpu_before = cpu_seconds(pid)
            start = time.perf_counter()
            report = await replica.verify()
            runs.append((time.perf_counter() - start, cpu_seconds(pid) - cpu_before, report.equal))
    finally:
        await replica.close()
    best = min(runs)
    return {
        "equal": all(r[2] for r in runs),
        "wall_ms": round(best[0] * 1000, 1),
        "server_cpu_ms": round(min(r[1] for r in runs) * 1000, 1),
        "rounds": report.range_rounds,
    }


def _answer_ms(collection_id: int) -> float:
    """The server's database work for one equal whole-space check, in this process."""
    from replication.protocol.ranges import BUCKETS, Ask
    from replication.ranges import range_answer, ranges_stored

    summary = ranges_stored(collection_id).total()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        body, _ = range_answer(
            collection_id=collection_id, read_filter=None, asks=[Ask(0, BUCKETS, summary)]
        )
        best = min(best, time.perf_counter() - start)
        assert body["equal"]
    return round(best * 1000, 2)


@contextmanager
def _summaries_off() -> Iterator[None]:
    from replication.services import engine

    deltas, apply = engine._range_deltas, engine.bucket_deltas_apply
    engine._range_deltas = lambda *args: {}
    engine.bucket_deltas_apply = lambda *args: None
    try:
        yield
    finally:
        engine._range_deltas = deltas
        engine.bucket_deltas_apply = apply


def write_cost(count: int, rounds: int = 3) -> dict[str, Any]:
    """batch_apply CPU µs per document with and without the summary upkeep, alternating."""
    from accounts.access import System
    from replication.services.engine import batch_apply

    def one(prefix: str) -> tuple[float, float]:
        collection_id = _collection(f"{prefix}-{time.time_ns()}")
        figures = []
        for revision in (1, 2):
            docs = make_documents(count, prefix=prefix, origin="bench-write")
            for doc in docs:
                doc["_revision"] = revision
                doc["_modified"] += revision
            start = time.process_time()
            for index in range(0, count, 500):
                batch_apply(
                    actor=System("bench ranges"),
                    collection_id=collection_id,
                    feed={"changeSet": docs[index : index + 500]},
                    origin="bench-write",
                )
            figures.append((time.process_time() - start) * 1e6 / count)
        return figures[0], figures[1]

    one("warm")
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    for _ in range(rounds):
        on.append(one("cost-on"))
        with _summaries_off():
            off.append(one("cost-off"))

    def best(runs: list[tuple[float, float]], index: int) -> float:
        return min(run[index] for run in runs)

    result = {
        "docs": count,
        "rounds": rounds,
        "insert_us_per_doc": {"on": round(best(on, 0), 1), "off": round(best(off, 0), 1)},
        "update_us_per_doc": {"on": round(best(on, 1), 1), "off": round(best(off, 1), 1)},
    }
    for kind in ("insert_us_per_doc", "update_us_per_doc"):
        figures = result[kind]
        figures["overhead"] = ratio(figures["on"] - figures["off"], figures["off"])  # type: ignore[index]
    return result


def run(ctx: PassContext) -> dict[str, Any]:
    count = ctx.sizes.ranges_docs
    differences = ctx.sizes.ranges_differences
    result: dict[str, Any] = {"docs": count, "differences": differences}
    result["write_cost"] = write_cost(min(count, 20_000))
    missing = replication_route_missing()
    if missing:
        result["skipped"] = missing
        return result
    name = f"ranges-{time.time_ns()}"
    collection_id = _collection(name)
    _write(collection_id, make_documents(count, prefix="r", origin="bench-seed"))
    phone = ctx.work_dir / f"{name}-phone.sqlite3"
    with running(daphne(ctx, "ranges")) as server:
        full = asyncio.run(_sync(server.port, ctx, name, phone))
        backup = _export(collection_id)
        changed = make_documents(differences, prefix="r", origin="bench-after-backup")
        for doc in changed:
            doc["_revision"], doc["title"] = 2, "changed after the backup"
        _write(collection_id, changed)
        asyncio.run(_sync(server.port, ctx, name, phone))
        copy = ctx.work_dir / f"{name}-phone-copy.sqlite3"
        shutil.copy(phone, copy)

        _import(name, backup)
        reset = asyncio.run(_sync(server.port, ctx, name, copy, ranges=False))
        _import(name, backup)
        repair = asyncio.run(_sync(server.port, ctx, name, phone))
        verify = asyncio.run(_verify(server.port, ctx, name, phone, server.process.pid))
    verify["answer_ms_in_process"] = _answer_ms(collection_id)
    repair["bytes_share_of_full"] = ratio(repair["bytes"], full["bytes"])
    repair["time_share_of_full"] = ratio(repair["seconds"], full["seconds"])
    repair["bytes_share_of_reset"] = ratio(repair["bytes"], reset["bytes"])
    repair["time_share_of_reset"] = ratio(repair["seconds"], reset["seconds"])
    result.update(full_catch_up=full, reset_without_ranges=reset, repair=repair, verify=verify)
    cost = result["write_cost"]
    result["headline"] = (
        f"repair of {differences} in {count}: {repair['bytes']} B"
        f" ({repair['bytes_share_of_full']} of a full catch-up's {full['bytes']} B),"
        f" {repair['seconds']} s ({repair['time_share_of_full']} of {full['seconds']} s);"
        f" verify {verify['wall_ms']} ms, server CPU {verify['server_cpu_ms']} ms;"
        f" batch_apply overhead insert {cost['insert_us_per_doc']['overhead']},"
        f" update {cost['update_us_per_doc']['overhead']}"
    )
    return result
