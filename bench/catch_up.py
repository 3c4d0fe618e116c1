"""Catch-up: a fresh replica pulls a whole collection and stores it locally.

The collection (`catchup_docs` documents of ~200 bytes) is written straight through
`batch_apply`. A fresh replica (zero markers) connects, pulls every chunk and stores each one
in its own SQLite file before acking it; the time runs from opening the socket to the stored
end markers. Baselines, same run: reading the same rows from the database in one ordered
query (the floor), and paging through them with `selectors.changes_since` in server-sized
chunks (the server's own read path, no websocket).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.harness import TENANT, PassContext, daphne, make_documents, profiled, ratio, running
from bench.push_ingest import _collection, replication_route_missing
from bench.wire import Session

NAME = "catch_up"


def _populate(ctx: PassContext, collection_id: int, count: int) -> float:
    from accounts.access import System
    from replication.services.engine import batch_apply

    docs = make_documents(count, prefix="cu", origin="bench-seed")
    start = time.perf_counter()
    for index in range(0, count, 500):
        batch_apply(
            actor=System("bench seed"),
            collection_id=collection_id,
            feed={"changeSet": docs[index : index + 500]},
            origin="bench-seed",
        )
    seconds = time.perf_counter() - start
    _analyze()
    return seconds


def _analyze() -> None:
    """Up-to-date planner statistics after the bulk load, as autovacuum brings them soon after
    one: without them PostgreSQL planned every page as a bitmap scan and a sort of all the
    rows after its marker (20-35 ms a page at 100,000 rows instead of 3), and whether the
    autovacuum's ANALYZE landed before, during or after the baselines moved `changes_since`
    between 3.7 and 10.6 s from run to run (2026-12-06)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def raw_read(collection_id: int) -> dict[str, Any]:
    from replication.models import Document

    start = time.perf_counter()
    rows = 0
    for _row in (
        Document.objects.filter(collection_id=collection_id)
        .order_by("seq")
        .values_list("doc_id", "body", "revision", "modified", "origin", "seq")
        .iterator(chunk_size=2000)
    ):
        rows += 1
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": round(seconds, 3)}


def selector_read(collection_id: int, chunk: int) -> dict[str, Any]:
    from replication.selectors import changes_since, feed_from_changes

    start = time.perf_counter()
    rows, after, pages = 0, 0, 0
    while pages < 1_000_000:
        changes = changes_since(collection_id=collection_id, after_seq=after, limit=chunk)
        if not changes:
            break
        feed_from_changes(changes)
        rows += len(changes)
        after = changes[-1].seq
        pages += 1
    seconds = time.perf_counter() - start
    return {"rows": rows, "pages": pages, "seconds": round(seconds, 3)}


class LocalStore:
    """The replica's local database: one SQLite file, one transaction per pulled chunk."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE documents (id TEXT PRIMARY KEY, body TEXT NOT NULL,"
            " revision INTEGER NOT NULL, modified INTEGER NOT NULL, origin TEXT NOT NULL)"
        )
        self.db.commit()

    def store(self, feed: dict[str, Any]) -> None:
        rows = [
            (d["_id"], json.dumps(d), d["_revision"], d["_modified"], d.get("_origin") or "")
            for d in feed.get("changeSet") or ()
        ]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?)", rows)
            for doc_id in feed.get("tombstoneMap") or ():
                self.db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM documents").fetchone()[0])


async def _sdk_catch_up(port: int, ctx: PassContext, collection: str, path: Path) -> dict[str, Any]:
    """The same catch-up by the SDK's replica (`datagate_replica.AsyncReplica.sync`)."""
    from datagate_replica import AsyncReplica

    start = time.perf_counter()
    replica = AsyncReplica(f"ws://127.0.0.1:{port}", TENANT, collection, ctx.token, path=path)
    try:
        report = await replica.sync()
        seconds = time.perf_counter() - start
        stored = len(replica.list())
    finally:
        await replica.close()
    return {"seconds": round(seconds, 3), "pulled": report.pulled, "stored": stored}


async def _catch_up(url: str, ctx: PassContext, collection: str, store: LocalStore) -> float:
    start = time.perf_counter()
    session = await Session.open(url, token=ctx.token, tenant=TENANT, collection=collection)
    try:
        await session.connect(live=False)
        await session.pull(batch_size=500, store=store.store)
        seconds = time.perf_counter() - start
    finally:
        await session.close()
    return seconds


def run(ctx: PassContext) -> dict[str, Any]:
    count = ctx.sizes.catchup_docs
    name = f"catchup-{time.time_ns()}"
    collection_id = _collection(name)
    seed_seconds = _populate(ctx, collection_id, count)
    from django.conf import settings

    chunk = int(settings.DATAGATE["CHUNK_SIZE"])
    baseline = raw_read(collection_id)
    selector = selector_read(collection_id, chunk)
    result: dict[str, Any] = {
        "docs": count,
        "seed_seconds": round(seed_seconds, 3),
        "baseline_raw_read": baseline,
        "baseline_changes_since": selector,
    }
    missing = replication_route_missing()
    if missing:
        result["skipped"] = missing
        return result
    store = LocalStore(ctx.work_dir / f"{name}-replica.sqlite3")
    with running(daphne(ctx, "catchup")) as server:
        url = ctx.collection_url(server.port, name)
        with profiled(ctx, server.process.pid, "catch-up", 8):
            seconds = asyncio.run(_catch_up(url, ctx, name, store))
        sdk: dict[str, Any] = {}
        try:
            sdk = asyncio.run(
                _sdk_catch_up(server.port, ctx, name, ctx.work_dir / f"{name}-sdk.sqlite3")
            )
            sdk["docs_per_s"] = round(count / sdk["seconds"])
            sdk["ratio_to_raw_read"] = ratio(sdk["seconds"], baseline["seconds"])
        except Exception as exc:
            sdk = {"error": f"{type(exc).__name__}: {exc}"}
    result["sdk_replica"] = sdk
    stored = store.count()
    result["replica"] = {
        "seconds": round(seconds, 3),
        "docs_per_s": round(count / seconds),
        "stored": stored,
        "ratio_to_raw_read": ratio(seconds, baseline["seconds"]),
        "ratio_to_changes_since": ratio(seconds, selector["seconds"]),
    }
    result["headline"] = (
        f"{count} docs in {seconds:.2f} s ({stored} stored), SDK {sdk.get('seconds')} s;"
        f" raw read {baseline['seconds']} s,"
        f" changes_since {selector['seconds']} s"
    )
    return result
