"""Nitrite G3 sessions: what a Nitrite `nitrite-replication` (G3) replica reads, exactly.

Nitrite's own Java replica client (its last form, "G3"; ../shared/NITRITE-G3.md) parses
server frames with a default Jackson `ObjectMapper`: it refuses every key it does not know
inside `header`, `feed`, `receipt` and markers, and at the top level of the error, disconnect
and feed messages. An extra key is fatal to its session. So a G3 session's frames are cut to
the key sets below, never more; missing keys are sent as null (Jackson writes nulls itself).

The session machine (`machine.py`, rule 7) decides that a session is G3 (its Connect carries
no `capabilities` key, which DataGate's own clients always send) and builds its messages as
for any session; `shape` then projects each one onto its G3 key set. What else G3 needs is
here too, as pure functions: the receipt that acknowledges every id received
(`receipt_of_feed`), incoming documents without the `_origin` a G3 replica carries back as
a user field (`without_origin`), and the pull's corrections for refused changes
(`corrections`, docs/decisions/0011-a-refused-g3-change-is-corrected-in-the-pull.md).

No Django, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.door import printable
from replication.protocol import messages as m

HEADER_KEYS = (
    "id",
    "transactionId",
    "correlationId",
    "tenant",
    "collection",
    "userName",
    "timestamp",
    "messageType",
    "origin",
)
MARKER_KEYS = ("collectionMarker", "tombstoneMarker")
FEED_KEYS = ("changeSet", "tombstoneMap")
RECEIPT_KEYS = ("added", "removed")
# `BatchMessage`'s fields: every batch-family message carries them (often null).
BATCH_KEYS = ("nextOffset", "batchSize", "startMarkers", "endMarkers")

# NITRITE-G3.md section 1.3: the body keys of each message type, besides `header`.
BODY_KEYS: dict[str, tuple[str, ...]] = {
    m.ERROR: ("error",),
    m.CONNECT_ACK: (*BATCH_KEYS, "tombstoneTtl"),
    m.DISCONNECT: (),
    m.BATCH_START: (*BATCH_KEYS, "feed"),
    m.BATCH_CONTINUE: (*BATCH_KEYS, "feed"),
    m.BATCH_END: BATCH_KEYS,
    m.BATCH_ACK: (*BATCH_KEYS, "receipt"),
    m.BATCH_END_ACK: BATCH_KEYS,
    m.FEED: ("feed",),
    m.FEED_ACK: ("receipt",),
}


def shape(message: Mapping[str, Any]) -> dict[str, Any]:
    """`message` cut to the G3 key set of its type (missing keys null, nested ones too).

    A type G3 does not know is a bug in the caller (the G3 transition table never leads to
    one): KeyError.
    """
    header = message["header"]
    keys = BODY_KEYS[header["messageType"]]
    shaped: dict[str, Any] = {"header": {key: header.get(key) for key in HEADER_KEYS}}
    for key in keys:
        value = message.get(key)
        if key in ("startMarkers", "endMarkers"):
            value = _markers(value)
        elif key == "feed":
            value = _feed(value)
        elif key == "receipt":
            value = _receipt(value)
        shaped[key] = value
    return shaped


def _markers(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {key: value.get(key) for key in MARKER_KEYS}


def _feed(value: Mapping[str, Any] | None) -> dict[str, Any]:
    value = value or {}
    return {
        "changeSet": [without_origin(doc) for doc in value.get("changeSet") or []],
        "tombstoneMap": dict(value.get("tombstoneMap") or {}),
    }


def _receipt(value: Mapping[str, Any] | None) -> dict[str, Any]:
    value = value or {}
    return {key: list(value.get(key) or []) for key in RECEIPT_KEYS}


def without_origin(doc: Any) -> Any:
    """A document without `_origin`: G3 would store it as a user field and send it back."""
    if type(doc) is m.EncodedDocument:
        return doc.without_origin()
    if isinstance(doc, Mapping) and "_origin" in doc:
        return {key: value for key, value in doc.items() if key != "_origin"}
    return doc


def incoming_feed(feed: Mapping[str, Any]) -> dict[str, Any]:
    """A pushed G3 feed as the server applies it: the origin comes from the header only."""
    return {
        "changeSet": [without_origin(doc) for doc in feed.get("changeSet") or []],
        "tombstoneMap": dict(feed.get("tombstoneMap") or {}),
    }


def receipt_of_feed(feed: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every id received, refused ones included: G3 keeps an id it does not see in a receipt
    in its ledger and resends it for ever (NITRITE-G3.md section 2.2). Refused changes are
    corrected in the pull instead (`corrections`). An id with a lone surrogate (refused by the
    door, DG-4002) is named escaped, as in every receipt: no frame could carry it as it is."""
    added: list[str] = []
    for doc in feed.get("changeSet") or []:
        doc_id = doc.get("_id") if isinstance(doc, Mapping) else None
        if isinstance(doc_id, str):
            shown = printable(doc_id, limit=len(doc_id))
            if shown not in added:
                added.append(shown)
    removed = [
        printable(doc_id, limit=len(doc_id))
        for doc_id in feed.get("tombstoneMap") or {}
        if isinstance(doc_id, str)
    ]
    return {"added": added, "removed": removed}


# --- refused changes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pushed:
    """What a G3 replica pushed for an id the server refused: a write or a delete, with the
    revision and time it sent (None when they were not valid integers)."""

    deleted: bool
    revision: int | None
    modified: int | None


@dataclass(frozen=True, slots=True)
class Held:
    """The document the server holds for a refused id (its fields, revision and time). Where
    it holds nothing the user may read (no document, a tombstone, or hidden), callers pass
    None instead."""

    body: Mapping[str, Any]
    revision: int
    modified: int


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def refused_pushes(feed: Mapping[str, Any], refused_ids: set[str]) -> dict[str, Pushed]:
    """What the feed carried for each refused id (the last version, as the server reads it)."""
    found: dict[str, Pushed] = {}
    for doc in feed.get("changeSet") or []:
        doc_id = doc.get("_id") if isinstance(doc, Mapping) else None
        if isinstance(doc_id, str) and doc_id in refused_ids:
            found[doc_id] = Pushed(False, _int(doc.get("_revision")), _int(doc.get("_modified")))
    for doc_id, deleted_at in (feed.get("tombstoneMap") or {}).items():
        if doc_id in refused_ids and doc_id not in found:
            found[doc_id] = Pushed(True, None, _int(deleted_at))
    return found


def corrections(
    *,
    refused: Mapping[str, Pushed],
    held: Mapping[str, Held | None],
    client_end: tuple[int, int] | None,
    now_ms: int,
) -> dict[str, Any]:
    """The pull chunk that brings a G3 replica back to the server's version of each id whose
    change the server refused (docs/decisions/0011).

    G3 merges by revision first, then by a strictly greater `_modified`; a document arriving
    over a local tombstone only lands if its `_modified` is at least the tombstone's counter;
    an incoming tombstone always removes (NITRITE-G3.md section 3). And G3 pushes, at its next
    session, every document whose `_modified` lies past the local marker it sent in this
    session's batch.end (`client_end`: its collection and tombstone markers). So:

    - a refused write, the server holding a document: nothing when it is that very version (a
      read-only replica pushing back what it pulled); else the server's document, verbatim
      when its revision already beats the replica's, otherwise with the replica's revision + 1
      and the replica's own `_modified`, so that it wins there without being pushed back;
    - a refused write, the server holding nothing readable: a tombstone (the replica drops it);
    - a refused delete, the server holding a document: the document, with a `_modified` no
      older than the replica's tombstone counters (so it lands over the tombstone);
    - a refused delete, the server holding nothing: nothing (the replica already agrees).
    """
    change_set: list[dict[str, Any]] = []
    tombstone_map: dict[str, int] = {}
    end_docs, end_tombs = client_end if client_end is not None else (0, 0)
    for doc_id, pushed in refused.items():
        server = held.get(doc_id)
        if server is None:
            if not pushed.deleted:
                tombstone_map[doc_id] = pushed.modified if pushed.modified is not None else now_ms
            continue
        revision, modified = server.revision, server.modified
        if not pushed.deleted and (pushed.revision, pushed.modified) == (revision, modified):
            continue  # the replica pushed back the server's own version: it holds it already
        if pushed.deleted:
            modified = max(modified, end_tombs or now_ms)
        elif pushed.revision is not None and revision <= pushed.revision:
            revision = pushed.revision + 1
            modified = pushed.modified if pushed.modified is not None else max(modified, end_docs)
        doc = dict(server.body)
        doc.update({"_id": doc_id, "_revision": revision, "_modified": modified})
        change_set.append(doc)
    return {"changeSet": change_set, "tombstoneMap": tombstone_map}
