"""The doorbell: after a change commits, tell live sessions that a collection moved.

The database is the truth and the channel layer only rings the bell (docs/decisions/
0002-the-database-is-the-truth.md): a message says "collection 7 is now at seq 1042", and a
listener reads what it has not sent from the database. A lost message delays a feed until the
next bell or the listener's periodic check; it never loses a change.
"""

from __future__ import annotations

import logging
from functools import partial

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

COLLECTION_CHANGED = "collection.changed"


def collection_group(collection_id: int) -> str:
    return f"dg.collection.{collection_id}"


def _ring(collection_id: int, seq: int) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            collection_group(collection_id),
            {"type": COLLECTION_CHANGED, "collection": collection_id, "seq": seq},
        )
    except Exception:  # a doorbell must never fail a committed write
        logger.warning(
            "doorbell for collection %s at seq %s not delivered", collection_id, seq, exc_info=True
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
