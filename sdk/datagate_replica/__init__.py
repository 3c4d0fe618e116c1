"""datagate_replica: a local SQLite replica that syncs with a DataGate server.

    from datagate_replica import Replica

    with Replica("ws://127.0.0.1:8000", "acme", "notes", token, path="notes.sqlite3") as notes:
        notes.put("n1", {"title": "hello"})
        notes.sync()

Imports nothing of the server; depends on `websockets` and the standard library.
"""

from datagate_replica.clock import HybridClock, incoming_wins, version_key
from datagate_replica.replica import AsyncReplica, Replica
from datagate_replica.store import (
    Change,
    DocumentTooLarge,
    Markers,
    RejectedChange,
    Store,
    StoreError,
    Version,
)
from datagate_replica.sync import AuthenticationError, SessionReport, SyncEngine, SyncError

__version__ = "0.1.0"

__all__ = [
    "AsyncReplica",
    "AuthenticationError",
    "Change",
    "DocumentTooLarge",
    "HybridClock",
    "Markers",
    "RejectedChange",
    "Replica",
    "SessionReport",
    "Store",
    "StoreError",
    "SyncEngine",
    "SyncError",
    "Version",
    "incoming_wins",
    "version_key",
]
