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
from typing import Any

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


def layer_send_soon(group: str, message: dict[str, Any], *, what: str) -> None:
    """Send a doorbell message to a layer group from synchronous code, never failing.

    In a database thread of a running event loop the send is handed to the loop and this
    returns at once: waiting for it (async_to_sync) kept the writer's database thread idle for
    a whole loop turn per commit, and on a busy server that wait, not the write, capped how many
    feeds a writer got applied per second (bench/RESULTS.md). Elsewhere (a management command)
    it waits. `what` names the bell in the warning logged if it is not delivered.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    loop = _serving_loop()
    if loop is not None:
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        future.add_done_callback(partial(_sent, what))
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # a doorbell must never fail a committed write
        logger.warning("%s not delivered", what, exc_info=True)


def _sent(what: str, future: concurrent.futures.Future[None]) -> None:
    if future.cancelled():
        logger.warning("%s not delivered (cancelled)", what)
    elif future.exception() is not None:
        logger.warning("%s not delivered", what, exc_info=future.exception())


def _ring(collection_id: int, seq: int) -> None:
    layer_send_soon(
        collection_group(collection_id),
        {"type": COLLECTION_CHANGED, "collection": collection_id, "seq": seq},
        what=f"doorbell for collection {collection_id} at seq {seq}",
    )


def ring_on_commit(*, collection_id: int, seq: int) -> None:
    """Ring the collection's bell once the current transaction commits."""
    transaction.on_commit(partial(_ring, collection_id, seq))


# --- operator requests to one replica's session ----------------------------------------------

REPLICA_DISCONNECT = "replica.disconnect"
# Every process's hub (core/hub.py, for replication/live.py) joins this one group once,
# rather than one group per replica (STYLE.md, "Dead group members"); the process serving
# the replica acts.
REPLICA_CONTROL_GROUP = "dg.replicas"


VIEW_CHANGED = "view.changed"


def view_changed_request(*, view_pk: int) -> bool:
    """Tell every process that a data view's definition changed (or the view went away): its
    live sessions end with Disconnect, and their replicas reconnect to the new definition (a
    reset snapshot: docs/decisions/0016). At most once, like every layer message."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(
            REPLICA_CONTROL_GROUP, {"type": VIEW_CHANGED, "view": view_pk}
        )
    except Exception:
        logger.warning("view change of view %s not announced", view_pk, exc_info=True)
        return False
    return True


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
