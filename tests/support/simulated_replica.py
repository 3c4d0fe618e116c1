"""A minimal replica for service-level tests: the client side of PROTOCOL.md sections 4 and 5.

It holds local documents and a journal of pending local changes, pushes through
`batch_apply`, and pulls through `pull_start` + `changes_since` the way a replica does over
the websocket: a `reset` pull is a full snapshot, after which the replica drops what the
snapshot lacks unless it is pending, and after a restore it pushes again what the snapshot
lacks or holds older. It is test scaffolding, not a model of any particular SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accounts.access import System
from core.errors import ErrorCode
from replication.changes import Version
from replication.models import Collection
from replication.protocol.conflicts import DELETE, WRITE, incoming_wins
from replication.protocol.markers import Markers, PullStart, pull_start
from replication.selectors import changes_since
from replication.services.engine import ApplyResult, batch_apply

PURGED = ErrorCode.PURGED_DELETE.code


@dataclass
class SimReplica:
    origin: str
    documents: dict[str, Version] = field(default_factory=dict)
    tombstones: dict[str, Version] = field(default_factory=dict)
    pending: dict[str, Version] = field(default_factory=dict)
    markers: Markers = field(default_factory=Markers)
    last_start: PullStart | None = None
    receipts: list[dict[str, Any]] = field(default_factory=list)

    # --- local changes ------------------------------------------------------------------

    def write(self, doc_id: str, modified: int, **body: Any) -> None:
        held = self.documents.get(doc_id)
        revision = held.revision + 1 if held is not None else 1
        version = Version(doc_id, WRITE, modified, revision, self.origin, dict(body))
        self.tombstones.pop(doc_id, None)
        self.documents[doc_id] = version
        self.pending[doc_id] = version

    def delete(self, doc_id: str, modified: int) -> None:
        self.documents.pop(doc_id, None)
        version = Version(doc_id, DELETE, modified, 0, self.origin, None)
        self.tombstones[doc_id] = version
        self.pending[doc_id] = version

    def held(self, doc_id: str) -> Version | None:
        return self.pending.get(doc_id) or self.documents.get(doc_id) or self.tombstones.get(doc_id)

    def state(self) -> dict[str, dict[str, Any]]:
        return {doc_id: dict(v.body or {}) for doc_id, v in self.documents.items()}

    # --- a session ----------------------------------------------------------------------

    def sync(self, collection: Collection) -> None:
        """Push pending changes, then pull (with a reset when the server says so)."""
        self.push(collection)
        restored = self.pull(collection)
        if restored:
            self.push(collection)

    def push(self, collection: Collection) -> ApplyResult:
        feed: dict[str, Any] = {"changeSet": [], "tombstoneMap": {}}
        for version in self.pending.values():
            if version.kind == WRITE:
                feed["changeSet"].append(
                    {
                        **(version.body or {}),
                        "_id": version.doc_id,
                        "_revision": version.revision,
                        "_modified": version.modified,
                        "_origin": version.origin,
                    }
                )
            else:
                feed["tombstoneMap"][version.doc_id] = version.modified
        result = batch_apply(
            actor=System("test"), collection_id=collection.pk, feed=feed, origin=self.origin
        )
        receipt = result.receipt()
        self.receipts.append(receipt)
        for doc_id in receipt["added"] + receipt["removed"]:
            self.pending.pop(doc_id, None)
        for rejection in receipt["rejected"]:
            self.pending.pop(rejection["id"], None)
            if rejection["code"] == PURGED:
                # The server says this id was deleted and the delete collected.
                self.documents.pop(rejection["id"], None)
        return result

    def pull(self, collection: Collection) -> bool:
        """Pull; True when the server was restored and what it lacks must be pushed again."""
        collection.refresh_from_db()
        start = pull_start(
            client=self.markers,
            last_seq=collection.last_seq,
            purge_seq=collection.purge_seq,
            epoch=collection.epoch,
        )
        self.last_start = start
        after = self.markers.seq if start is PullStart.FROM_MARKER else 0
        changes = changes_since(
            collection_id=collection.pk,
            after_seq=after,
            limit=1_000_000,
            up_to_seq=collection.last_seq,
        )
        incoming = {c.doc_id: c.version for c in changes}
        if start is not PullStart.FROM_MARKER:
            for held in (self.documents, self.tombstones):
                for doc_id in list(held):
                    if doc_id in incoming or doc_id in self.pending:
                        continue
                    if start is PullStart.RESET_RESTORE:
                        self.pending[doc_id] = held[doc_id]  # the server lost it: push again
                    else:
                        del held[doc_id]
        for doc_id, version in incoming.items():
            mine = self.held(doc_id)
            if mine is not None and not incoming_wins(version.key(), mine.key()):
                if start is PullStart.RESET_RESTORE and mine.key() != version.key():
                    self.pending[doc_id] = mine  # the server holds an older version: push again
                continue
            self.pending.pop(doc_id, None)
            if version.kind == DELETE:
                self.documents.pop(doc_id, None)
                self.tombstones[doc_id] = version
            else:
                self.tombstones.pop(doc_id, None)
                self.documents[doc_id] = version
        self.markers = Markers(collection.last_seq, collection.epoch)
        return start is PullStart.RESET_RESTORE and bool(self.pending)
