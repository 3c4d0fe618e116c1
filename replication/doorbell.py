"""The doorbell: after a change commits, tell live sessions that a collection moved.

The database is the truth and the channel layer only rings the bell (docs/decisions/
0002-the-database-is-the-truth.md): a message says "collection 7 is now at seq 1042", and a
listener reads what it has not sent from the database. A lost message delays a feed until the
next bell or the listener's periodic check; it never loses a change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from functools import partial

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

COLLECTION_CHANGED = "collection.changed"


def collection_group(collection_id: int) -> str:
    return f"dg.collection.{collection_id}"


def _serving_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread does database work for (a `sync_to_async` worker under
    daphne), if it is running; None in a management command or a plain thread."""
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop: asyncio.AbstractEventLoop | None = getattr(
        SyncToAsync.threadlocal, "main_event_loop", None
    )
    return loop if loop is not None and loop.is_running() else None


def _ring(collection_id: int, seq: int) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    group = collection_group(collection_id)
    message = {"type": COLLECTION_CHANGED, "collection": collection_id, "seq": seq}
    loop = _serving_loop()
    if loop is not None:
        # Hand the bell to the event loop and go on: waiting for it (async_to_sync) kept the
        # writer's database thread idle for a whole loop turn per commit, and on a busy server
        # that wait, not the write, limited how many feeds a writer got applied per second
        # (bench/RESULTS.md).
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        future.add_done_callback(partial(_rung, collection_id, seq))
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # a doorbell must never fail a committed write
        _not_delivered(collection_id, seq)


def _rung(collection_id: int, seq: int, future: concurrent.futures.Future[None]) -> None:
    if future.cancelled() or future.exception() is not None:
        _not_delivered(collection_id, seq, future.exception() if not future.cancelled() else None)


def _not_delivered(collection_id: int, seq: int, error: BaseException | None = None) -> None:
    logger.warning(
        "doorbell for collection %s at seq %s not delivered",
        collection_id,
        seq,
        exc_info=error or True,
    )


def ring_on_commit(*, collection_id: int, seq: int) -> None:
    """Ring the collection's bell once the current transaction commits."""
    transaction.on_commit(partial(_ring, collection_id, seq))


# --- operator requests to one replica's session ----------------------------------------------

REPLICA_DISCONNECT = "replica.disconnect"
# Every process's live hub (replication/live.py) joins this one group once, rather than one
# group per replica (STYLE.md, "Dead group members"); the process serving the replica acts.
REPLICA_CONTROL_GROUP = "dg.replicas"


def replica_disconnect_request(*, replica_pk: int, reason: str = "") -> bool:
    """Ask whichever process serves this replica to end its session (Disconnect, close 1000).

    Like every layer message this is at most once: False means the layer refused it; True
    only that it was handed over.
    """
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(
            REPLICA_CONTROL_GROUP,
            {"type": REPLICA_DISCONNECT, "replica": replica_pk, "reason": reason[:100]},
        )
    except Exception:
        logger.warning("disconnect request for replica %s not delivered", replica_pk, exc_info=True)
        return False
    return True
