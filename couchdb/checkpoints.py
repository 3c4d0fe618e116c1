"""`_local` documents (PouchDB's replication checkpoints), written behind.

A live PouchDB reads and writes its checkpoint on the server after every batch it pulls: two
requests per batch per replica, which were most of the database steps of a live sync. A
checkpoint is advice, not data: a client that finds an older one (or none) only replicates
again what it already has, which changes nothing. So this process answers checkpoint reads
from memory once it has seen them, applies writes in memory at once, and stores the written
ones in one database step per `FLUSH_SECONDS` (`checkpoints_save`). A crash loses at most that
much progress; another process reading the database meanwhile finds the older checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import Any

from channels.db import database_sync_to_async

from couchdb import services
from couchdb.services import CouchError, DatabaseGrant

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
MAX_HELD = 50_000

Key = tuple[int, str]  # (collection id, local doc id)


class Checkpoints:
    """One per event loop (= per daphne process)."""

    def __init__(self) -> None:
        self.held: dict[Key, tuple[str, dict[str, Any]]] = {}
        self.dirty: set[Key] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    async def get(self, grant: DatabaseGrant, doc_id: str) -> dict[str, Any]:
        key = (grant.collection_id, doc_id)
        held = self.held.get(key)
        if held is None:
            found = await database_sync_to_async(services.local_read)(grant=grant, doc_id=doc_id)
            if found is None:
                raise CouchError(404, "not_found", "missing")
            held = self._hold(key, found)
        rev, body = held
        return {**body, "_id": f"_local/{doc_id}", "_rev": rev}

    async def put(self, grant: DatabaseGrant, doc_id: str, doc: Mapping[str, Any]) -> str:
        key = (grant.collection_id, doc_id)
        held = self.held.get(key)
        if held is None:
            found = await database_sync_to_async(services.local_read)(grant=grant, doc_id=doc_id)
            held = self._hold(key, found) if found is not None else ("0-0", {})
        generation = int(held[0].split("-", 1)[1]) + 1
        rev = f"0-{generation}"
        body = {k: v for k, v in doc.items() if k not in ("_id", "_rev", "_revisions")}
        self._hold(key, (rev, body))
        self.dirty.add(key)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_soon)
        return rev

    async def delete(self, grant: DatabaseGrant, doc_id: str) -> None:
        key = (grant.collection_id, doc_id)
        self.held.pop(key, None)
        self.dirty.discard(key)
        await database_sync_to_async(services.local_delete)(grant=grant, doc_id=doc_id)

    def _hold(self, key: Key, value: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        if len(self.held) >= MAX_HELD and key not in self.held:
            for stale in [k for k in self.held if k not in self.dirty][: MAX_HELD // 10]:
                del self.held[stale]
        self.held[key] = value
        return value

    def _flush_soon(self) -> None:
        self._flush = None
        self._task = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        dirty, self.dirty = self.dirty, set()
        rows = {key: self.held[key] for key in dirty if key in self.held}
        if not rows:
            return
        try:
            await database_sync_to_async(services.locals_save)(rows=rows)
        except Exception:
            logger.warning("could not store %d checkpoints; retrying", len(rows), exc_info=True)
            self.dirty |= set(rows)
            if self._flush is None:
                loop = asyncio.get_running_loop()
                self._flush = loop.call_later(FLUSH_SECONDS, self._flush_soon)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Checkpoints] = (
    weakref.WeakKeyDictionary()
)


def get_checkpoints() -> Checkpoints:
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = Checkpoints()
    return found
