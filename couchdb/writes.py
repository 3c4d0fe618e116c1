"""Group commit for the CouchDB door's writes.

Every write request (`_bulk_docs`, PUT, DELETE, POST of a document) is one call of
`services.docs_apply`: one transaction that takes the collection's lock. An app that writes
documents one by one sends many small requests at once; applied one per database step, their
fixed cost (the lock, reading the stored versions, the journal, the doorbell) capped a writer
at a few dozen a second on this machine (bench/RESULTS.md). So requests of the same grant (the
same token and database) that arrive while an apply runs wait for the next one and are applied
together, in order, in one call: the outcome is that of applying them one after another, each
request gets its own results.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from channels.db import database_sync_to_async

from couchdb import services
from couchdb.services import DatabaseGrant

# Most documents applied in one call (one transaction).
MAX_BATCH_DOCS = 2_000

Waiting = tuple[list[Any], asyncio.Future[list[dict[str, Any]]]]


class WriteQueue:
    def __init__(self) -> None:
        self.waiting: list[Waiting] = []
        self.worker: asyncio.Task[None] | None = None


_by_loop: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, int, bool], WriteQueue]
] = weakref.WeakKeyDictionary()


async def docs_apply(
    *, grant: DatabaseGrant, docs: list[Any], new_edits: bool
) -> list[dict[str, Any]]:
    """`services.docs_apply`, batched with the same grant's concurrent writes."""
    loop = asyncio.get_running_loop()
    queues = _by_loop.setdefault(loop, {})
    key = (grant.collection_id, id(grant), new_edits)
    queue = queues.get(key)
    if queue is None:
        queue = queues[key] = WriteQueue()
    future: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
    queue.waiting.append((docs, future))
    if queue.worker is None:
        queue.worker = loop.create_task(_drain(queues, key, queue, grant, new_edits))
    return await future


async def _drain(
    queues: dict[tuple[int, int, bool], WriteQueue],
    key: tuple[int, int, bool],
    queue: WriteQueue,
    grant: DatabaseGrant,
    new_edits: bool,
) -> None:
    try:
        while queue.waiting:
            batch: list[Waiting] = []
            size = 0
            while queue.waiting and (
                not batch or size + len(queue.waiting[0][0]) <= MAX_BATCH_DOCS
            ):
                item = queue.waiting.pop(0)
                batch.append(item)
                size += len(item[0])
            docs = [doc for part, _ in batch for doc in part]
            try:
                results = await database_sync_to_async(services.docs_apply)(
                    grant=grant, docs=docs, new_edits=new_edits
                )
            except Exception as problem:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(problem)
                continue
            start = 0
            for part, future in batch:
                if not future.done():
                    future.set_result(results[start : start + len(part)])
                start += len(part)
    finally:
        queue.worker = None
        if queues.get(key) is queue and not queue.waiting:
            del queues[key]
