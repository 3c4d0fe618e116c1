"""The replica's local SQLite file: documents, tombstones, the journal, rejections, markers.

One file holds one replica of one collection (`tenant/collection`); the first use binds it and
draws the replica id (the `origin` it writes with), which never changes afterwards.

- `documents` / `tombstones`: the current version of every id the replica knows; an id lives in
  one of the two, never both (as on the server).
- `journal`: the local changes the server has not acknowledged yet, one row per id (the latest
  local version of it; an older pending version is superseded by a newer local edit anyway).
  Each row has a `change_no` that grows with every local change, so a receipt for a version that
  was edited again while in flight does not drop the newer edit.
- `rejected`: local changes the server refused, with its code and text. They leave the journal
  (the server would refuse them again) and are reported instead of retried.
- `meta`: the replica id, the binding, the stored server markers, the clock's highest time seen,
  the server's frame limit (configured, or learned from a DG-2007).

A change must fit in one websocket frame to be pushed: `local_put` refuses a document whose
fields encode to more than the frame limit less `FRAME_RESERVE_BYTES` (`DocumentTooLarge`),
the size the server refuses with DG-4013.

Every write is one transaction (`BEGIN IMMEDIATE`), so a crash leaves either all of a step or
none of it. The file runs in WAL mode; other processes (the command line) may use it at the same
time. A connection is shared by the threads of one process behind a lock.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datagate_replica.clock import DELETE, WRITE, HybridClock, VersionKey, version_key

ID_MAX_LENGTH = 128
SCHEMA_VERSION = "1"
# The server's DATAGATE_MAX_FRAME_BYTES by default, and what a frame holds besides one
# document's fields (header, meta fields, the feed's keys): the server's own reserve.
DEFAULT_FRAME_BYTES = 1024 * 1024
FRAME_RESERVE_BYTES = 4096

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, body TEXT NOT NULL, revision INTEGER NOT NULL,
    modified INTEGER NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (
    doc_id TEXT PRIMARY KEY, deleted_at INTEGER NOT NULL, revision INTEGER NOT NULL,
    origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    change_no INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL, body TEXT, revision INTEGER NOT NULL, modified INTEGER NOT NULL,
    origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    doc_id TEXT PRIMARY KEY, kind INTEGER NOT NULL, body TEXT, revision INTEGER NOT NULL,
    modified INTEGER NOT NULL, origin TEXT NOT NULL, code TEXT NOT NULL, error TEXT NOT NULL,
    rejected_at INTEGER NOT NULL);
"""


def max_document_bytes(frame_limit: int) -> int:
    """The largest encoded document (its fields) that fits a frame of `frame_limit` bytes."""
    return max(frame_limit - FRAME_RESERVE_BYTES, frame_limit // 2)


def encoded_size(body: Mapping[str, Any] | None) -> int:
    """Bytes of `body` as it travels (compact JSON, UTF-8), as the server measures it."""
    text = json.dumps(body or {}, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError(
            "fields must be valid Unicode text (a lone surrogate cannot be sent)"
        ) from None


class StoreError(Exception):
    """The local file cannot be used as asked (bound to another collection, bad input)."""


class DocumentTooLarge(StoreError):
    """A document whose fields cannot fit in one websocket frame: the server could never take
    it (DG-2007 for the frame, DG-4013 for the document), so `put` refuses it."""


@dataclass(frozen=True, slots=True)
class Markers:
    """The server's position, as it last gave it to this replica. Opaque: stored and echoed."""

    seq: int = 0
    epoch: int = 0

    def to_wire(self) -> dict[str, int]:
        return {"collectionMarker": self.seq, "tombstoneMarker": self.epoch}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> Markers:
        if not raw:
            return cls()
        seq, epoch = raw.get("collectionMarker") or 0, raw.get("tombstoneMarker") or 0
        if not isinstance(seq, int) or not isinstance(epoch, int):
            raise ValueError(f"markers must be integers, got {dict(raw)!r}")
        return cls(seq, epoch)

    @property
    def is_zero(self) -> bool:
        return self.seq == 0 and self.epoch == 0


@dataclass(frozen=True, slots=True)
class Version:
    """One version of one document: a write (body is the user's fields) or a delete."""

    doc_id: str
    kind: int
    modified: int
    revision: int
    origin: str
    body: dict[str, Any] | None = None

    @property
    def deleted(self) -> bool:
        return self.kind == DELETE

    def key(self) -> VersionKey:
        return version_key(
            kind=self.kind, modified=self.modified, revision=self.revision, origin=self.origin
        )

    def to_document(self) -> dict[str, Any]:
        """The document as the API returns it and the wire carries it."""
        doc: dict[str, Any] = dict(self.body or {})
        doc["_id"] = self.doc_id
        doc["_revision"] = self.revision
        doc["_modified"] = self.modified
        doc["_origin"] = self.origin
        return doc


@dataclass(frozen=True, slots=True)
class PendingChange:
    """A journal entry: a local version waiting for the server's receipt."""

    change_no: int
    version: Version


@dataclass(frozen=True, slots=True)
class RejectedChange:
    version: Version
    code: str
    error: str
    rejected_at: int


@dataclass(frozen=True, slots=True)
class Change:
    """What a change callback receives: one id changed here, locally or from the server."""

    doc_id: str
    source: str  # "local" or "remote"
    version: Version | None  # None when a reset dropped the id altogether

    @property
    def deleted(self) -> bool:
        return self.version is None or self.version.deleted

    @property
    def document(self) -> dict[str, Any] | None:
        if self.version is None or self.version.deleted:
            return None
        return self.version.to_document()


@dataclass
class Settlement:
    """What a receipt did to the journal."""

    dropped: int = 0
    rejected: list[RejectedChange] = field(default_factory=list)


# The server's document door (core/door.py, docs/errors.md "Bad input"), checked at
# `put` so that a change the server would refuse never enters the journal.
MAX_DEPTH = 64
_BAD_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_doc_id(doc_id: object) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise StoreError("a document id must be a non-empty string")
    if len(doc_id) > ID_MAX_LENGTH:
        raise StoreError(f"a document id has at most {ID_MAX_LENGTH} characters")
    if _BAD_ID_CHARS.search(doc_id):
        raise StoreError("DG-4002 a document id may not hold control characters or lone surrogates")
    return doc_id


def _holds_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str) and "\x00" in node:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _too_deep(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def check_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The user's fields: a JSON object whose keys do not start with `_` (reserved)."""
    if not isinstance(fields, Mapping):
        raise StoreError("a document's fields must be a mapping")
    body: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("_id", "_revision", "_modified", "_origin"):
            continue
        if not isinstance(name, str) or name.startswith("_"):
            raise StoreError(f"field {name!r}: names starting with '_' are reserved")
        body[name] = value
    try:
        text = json.dumps(body, allow_nan=False, ensure_ascii=False)
    except ValueError as exc:
        raise StoreError(f"DG-4012 fields must be JSON-serialisable: {exc}") from exc
    except TypeError as exc:
        raise StoreError(f"fields must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise StoreError(f"DG-4011 fields nest deeper than {MAX_DEPTH} levels") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError("DG-4010 fields hold a lone surrogate: not valid Unicode") from None
    if "\\u0000" in text and _holds_nul(body):
        raise StoreError("DG-4010 fields hold NUL (U+0000), which the server cannot store")
    if text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(body, MAX_DEPTH):
        raise StoreError(f"DG-4011 fields nest deeper than {MAX_DEPTH} levels")
    return body


def _dumps(body: dict[str, Any] | None) -> str | None:
    return None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False)


def _field_path(name: str) -> str:
    if not name or '"' in name or "\\" in name:
        raise StoreError(f"cannot query field {name!r}")
    return f'$."{name}"'


def state_digest(state: Mapping[str, Any]) -> str:
    """A hash of a whole state (`{"documents": ..., "tombstones": ...}`), order-independent."""
    encoded = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


class Store:
    """The local SQLite file of one replica."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if self._meta("replica_id") is None:
                self._set_meta("replica_id", uuid.uuid4().hex)
                self._set_meta("schema", SCHEMA_VERSION)
        self.replica_id: str = self._meta("replica_id") or ""
        self.clock = HybridClock(seen=int(self._meta("clock_seen") or 0))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- binding, markers, meta ------------------------------------------------------------

    def bind(self, *, tenant: str, collection: str, view: str | None = None) -> None:
        """Bind the file to `tenant/collection` (or one of its data views: its markers are the
        view's) on first use; refuse another one later."""
        wanted = f"{tenant}/{collection}" + (f"/views/{view}" if view else "")
        with self.transaction():
            bound = self._meta("binding")
            if bound is None:
                self._set_meta("binding", wanted)
            elif bound != wanted:
                raise StoreError(f"{self.path} holds a replica of {bound}, not of {wanted}")

    @property
    def binding(self) -> str | None:
        with self._lock:
            return self._meta("binding")

    def markers(self) -> Markers:
        with self._lock:
            return Markers(int(self._meta("marker_seq") or 0), int(self._meta("marker_epoch") or 0))

    def markers_store(self, markers: Markers) -> None:
        with self.transaction():
            self._store_markers(markers)

    def _store_markers(self, markers: Markers) -> None:
        self._set_meta("marker_seq", markers.seq)
        self._set_meta("marker_epoch", markers.epoch)

    def note(self, key: str, value: object) -> None:
        """Record an informational value (last sync time, last error) for `status`."""
        with self.transaction():
            self._set_meta(f"note:{key}", value)

    def notes(self) -> dict[str, str]:
        rows = self._read("SELECT key, value FROM meta WHERE key LIKE 'note:%' ORDER BY key")
        return {str(key)[5:]: str(value) for key, value in rows}

    # -- reading ---------------------------------------------------------------------------

    def _held(self, doc_id: str) -> Version | None:
        row = self._db.execute(
            "SELECT body, revision, modified, origin FROM documents WHERE doc_id = ?", (doc_id,)
        ).fetchone()
        if row is not None:
            return Version(doc_id, WRITE, row[2], row[1], row[3], json.loads(row[0]))
        row = self._db.execute(
            "SELECT deleted_at, revision, origin FROM tombstones WHERE doc_id = ?", (doc_id,)
        ).fetchone()
        if row is not None:
            return Version(doc_id, DELETE, row[0], row[1], row[2], None)
        return None

    def held(self, doc_id: str) -> Version | None:
        """The version held for an id: its document, its tombstone, or None."""
        with self._lock:
            return self._held(doc_id)

    def document(self, doc_id: str) -> dict[str, Any] | None:
        version = self.held(doc_id)
        return None if version is None or version.deleted else version.to_document()

    def documents(
        self, where: Mapping[str, Any] | None = None, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Live documents in id order, those whose fields equal every `where` value."""
        clauses: list[str] = []
        params: list[Any] = []
        for name, value in (where or {}).items():
            path = _field_path(name)
            if value is None:
                clauses.append("json_type(body, ?) = 'null'")
                params.append(path)
            elif isinstance(value, bool):
                clauses.append("json_type(body, ?) = ?")
                params += [path, "true" if value else "false"]
            elif isinstance(value, int | float | str):
                types = "('text')" if isinstance(value, str) else "('integer', 'real')"
                clauses.append(f"(json_type(body, ?) IN {types} AND json_extract(body, ?) = ?)")
                params += [path, path, value]
            else:  # lists and objects: compare their canonical JSON text
                clauses.append("json_extract(body, ?) = json(?)")
                params += [path, json.dumps(value, separators=(",", ":"))]
        sql = "SELECT doc_id, body, revision, modified, origin FROM documents"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY doc_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [
            Version(row[0], WRITE, row[3], row[2], row[4], json.loads(row[1])).to_document()
            for row in self._read(sql, params)
        ]

    def count(self) -> dict[str, int]:
        with self._lock:
            counts = {}
            for table in ("documents", "tombstones", "journal", "rejected"):
                counts[table] = int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
            return counts

    def state(self) -> dict[str, Any]:
        """The whole state in the server's comparison form (`selectors.collection_state`)."""
        documents = {
            row[0]: {"body": json.loads(row[1]), "revision": row[2], "modified": row[3]}
            for row in self._read("SELECT doc_id, body, revision, modified FROM documents")
        }
        tombstones = {
            row[0]: row[1] for row in self._read("SELECT doc_id, deleted_at FROM tombstones")
        }
        return {"documents": documents, "tombstones": tombstones}

    def state_hash(self) -> str:
        return state_digest(self.state())

    # -- local changes ---------------------------------------------------------------------

    def _write(self, version: Version) -> None:
        if version.kind == WRITE:
            self._db.execute("DELETE FROM tombstones WHERE doc_id = ?", (version.doc_id,))
            self._db.execute(
                "INSERT INTO documents (doc_id, body, revision, modified, origin) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET body = excluded.body, "
                "revision = excluded.revision, modified = excluded.modified, "
                "origin = excluded.origin",
                (
                    version.doc_id,
                    _dumps(version.body or {}),
                    version.revision,
                    version.modified,
                    version.origin,
                ),
            )
        else:
            self._db.execute("DELETE FROM documents WHERE doc_id = ?", (version.doc_id,))
            self._db.execute(
                "INSERT INTO tombstones (doc_id, deleted_at, revision, origin) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET "
                "deleted_at = excluded.deleted_at, revision = excluded.revision, "
                "origin = excluded.origin",
                (version.doc_id, version.modified, version.revision, version.origin),
            )

    def _journal_put(self, version: Version) -> None:
        self._db.execute("DELETE FROM journal WHERE doc_id = ?", (version.doc_id,))
        self._db.execute(
            "INSERT INTO journal (doc_id, kind, body, revision, modified, origin) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                version.doc_id,
                version.kind,
                _dumps(version.body),
                version.revision,
                version.modified,
                version.origin,
            ),
        )

    def _observe(self, modified: int) -> None:
        before = self.clock.seen
        self.clock.observe(modified)
        if self.clock.seen != before:
            self._set_meta("clock_seen", self.clock.seen)

    def _stamp(self) -> int:
        # Another process (the command line) may have stamped since this one last looked.
        self.clock.observe(int(self._meta("clock_seen") or 0))
        stamp = self.clock.stamp()
        self._set_meta("clock_seen", self.clock.seen)
        return stamp

    # -- the server's frame limit ----------------------------------------------------------

    def frame_limit(self) -> int:
        """The server's DATAGATE_MAX_FRAME_BYTES as this replica knows it."""
        return int(self._meta("frame_limit") or DEFAULT_FRAME_BYTES)

    def frame_limit_store(self, limit: int) -> None:
        with self.transaction():
            self._set_meta("frame_limit", int(limit))

    def max_document_bytes(self) -> int:
        return max_document_bytes(self.frame_limit())

    def local_put(self, doc_id: str, fields: Mapping[str, Any]) -> Version:
        """Write a document here: next revision, a fresh stamp, journaled for the server.

        Raises DocumentTooLarge when its fields cannot fit in one frame of the server."""
        doc_id = check_doc_id(doc_id)
        body = check_body(fields)
        size, most = encoded_size(body), self.max_document_bytes()
        if size > most:
            raise DocumentTooLarge(
                f"document {doc_id!r} encodes to {size} bytes; a change must fit in one "
                f"websocket frame: at most {most} bytes (the server's frame limit "
                f"{self.frame_limit()} less {FRAME_RESERVE_BYTES})"
            )
        with self.transaction():
            held = self._held(doc_id)
            if held is not None:
                self._observe(held.modified)
            version = Version(
                doc_id,
                WRITE,
                self._stamp(),
                (held.revision if held else 0) + 1,
                self.replica_id,
                body,
            )
            self._write(version)
            self._journal_put(version)
        return version

    def local_delete(self, doc_id: str) -> Version | None:
        """Delete a document here (None if there is no live document with that id)."""
        doc_id = check_doc_id(doc_id)
        with self.transaction():
            held = self._held(doc_id)
            if held is None or held.deleted:
                return None
            self._observe(held.modified)
            version = Version(
                doc_id, DELETE, self._stamp(), held.revision + 1, self.replica_id, None
            )
            self._write(version)
            self._journal_put(version)
        return version

    # -- the journal -----------------------------------------------------------------------

    def journal(self, *, limit: int | None = None, after: int = 0) -> list[PendingChange]:
        """Pending local changes in the order they were made, those after `change_no`."""
        sql = (
            "SELECT change_no, doc_id, kind, body, revision, modified, origin FROM journal "
            "WHERE change_no > ? ORDER BY change_no"
        )
        params: list[Any] = [after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            PendingChange(
                row[0],
                Version(
                    row[1],
                    row[2],
                    row[5],
                    row[4],
                    row[6],
                    None if row[3] is None else json.loads(row[3]),
                ),
            )
            for row in self._read(sql, params)
        ]

    def journal_size(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM journal")[0][0])

    def settle(
        self, sent: Mapping[str, int], receipt: Mapping[str, Any], *, at_ms: int = 0
    ) -> Settlement:
        """Apply a receipt to the journal.

        `sent` maps each id of the acknowledged chunk to the `change_no` that was sent. An id
        the receipt lists as added or removed leaves the journal only if it was not edited
        again since (same `change_no`); a rejected one moves to `rejected` with its reason.
        Ids the receipt does not mention stay in the journal and are sent again later.
        """
        result = Settlement()
        processed = [*(receipt.get("added") or []), *(receipt.get("removed") or [])]
        with self.transaction():
            for doc_id in processed:
                if doc_id in sent:
                    result.dropped += self._db.execute(
                        "DELETE FROM journal WHERE doc_id = ? AND change_no = ?",
                        (doc_id, sent[doc_id]),
                    ).rowcount
            for entry in receipt.get("rejected") or []:
                doc_id = entry.get("id") if isinstance(entry, Mapping) else None
                if not isinstance(doc_id, str) or doc_id not in sent:
                    continue
                code, error = str(entry.get("code") or ""), str(entry.get("error") or "")
                rejected = self._reject(doc_id, sent[doc_id], code, error, at_ms)
                if rejected is not None:
                    result.rejected.append(rejected)
        return result

    def reject_pending(
        self, doc_id: str, change_no: int, *, code: str, error: str, at_ms: int = 0
    ) -> RejectedChange | None:
        """Move a journal entry to `rejected` without a receipt (a change that can never be
        sent: too large for a frame, or a frame the server refused on its own)."""
        with self.transaction():
            return self._reject(doc_id, change_no, code, error, at_ms)

    def suspects(self) -> set[int]:
        """Journal entries (change_no) that were in a frame the server refused as a whole:
        the engine sends each alone until it is settled or rejected."""
        return set(json.loads(self._meta("suspects") or "[]"))

    def suspects_store(self, change_nos: Iterable[int]) -> None:
        with self.transaction():
            self._set_meta("suspects", json.dumps(sorted(change_nos)))

    def _reject(
        self, doc_id: str, change_no: int, code: str, error: str, at_ms: int
    ) -> RejectedChange | None:
        row = self._db.execute(
            "SELECT kind, body, revision, modified, origin FROM journal "
            "WHERE doc_id = ? AND change_no = ?",
            (doc_id, change_no),
        ).fetchone()
        if row is None:
            return None
        self._db.execute(
            "INSERT INTO rejected (doc_id, kind, body, revision, modified, origin, "
            "code, error, rejected_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(doc_id) DO UPDATE SET kind = excluded.kind, "
            "body = excluded.body, revision = excluded.revision, "
            "modified = excluded.modified, origin = excluded.origin, "
            "code = excluded.code, error = excluded.error, "
            "rejected_at = excluded.rejected_at",
            (doc_id, *row, code, error, at_ms),
        )
        self._db.execute("DELETE FROM journal WHERE doc_id = ?", (doc_id,))
        version = Version(
            doc_id,
            row[0],
            row[3],
            row[2],
            row[4],
            None if row[1] is None else json.loads(row[1]),
        )
        return RejectedChange(version, code, error, at_ms)

    def rejected(self) -> list[RejectedChange]:
        rows = self._read(
            "SELECT doc_id, kind, body, revision, modified, origin, code, error, rejected_at "
            "FROM rejected ORDER BY rejected_at, doc_id"
        )
        return [
            RejectedChange(
                Version(
                    row[0],
                    row[1],
                    row[4],
                    row[3],
                    row[5],
                    None if row[2] is None else json.loads(row[2]),
                ),
                row[6],
                row[7],
                row[8],
            )
            for row in rows
        ]

    def rejected_clear(self, doc_ids: Iterable[str] | None = None) -> int:
        """Forget rejected changes (all, or those ids)."""
        with self.transaction():
            if doc_ids is None:
                return int(self._db.execute("DELETE FROM rejected").rowcount)
            return sum(
                int(self._db.execute("DELETE FROM rejected WHERE doc_id = ?", (i,)).rowcount)
                for i in doc_ids
            )

    # -- remote changes --------------------------------------------------------------------

    def apply_remote(
        self, versions: Iterable[Version], *, markers: Markers | None = None
    ) -> list[Change]:
        """Apply versions from the server by the conflict rule, atomically (with `markers`).

        A version that wins replaces what is held; a pending local change it beats (or equals:
        the server already holds it) leaves the journal. A version that loses changes nothing:
        the local one is newer and either pending or already on the server.
        """
        changes: list[Change] = []
        with self.transaction():
            for version in versions:
                self._observe(version.modified)
                held = self._held(version.doc_id)
                incoming = version
                if version.deleted:
                    # The wire carries only a delete's time; number it after what is held.
                    incoming = Version(
                        version.doc_id,
                        DELETE,
                        version.modified,
                        (held.revision + 1) if held is not None else 1,
                        version.origin,
                        None,
                    )
                if held is None or version.key() > held.key():
                    self._write(incoming)
                    changes.append(Change(version.doc_id, "remote", incoming))
                pending = self._db.execute(
                    "SELECT kind, revision, modified, origin FROM journal WHERE doc_id = ?",
                    (version.doc_id,),
                ).fetchone()
                if pending is not None:
                    pending_key = version_key(
                        kind=pending[0], revision=pending[1], modified=pending[2], origin=pending[3]
                    )
                    if version.key() >= pending_key:
                        self._db.execute("DELETE FROM journal WHERE doc_id = ?", (version.doc_id,))
            if markers is not None:
                self._store_markers(markers)
        return changes

    def reset_complete(
        self, *, snapshot: Mapping[str, VersionKey], markers: Markers, restore: bool
    ) -> tuple[list[Change], int]:
        """End a full-snapshot pull in one transaction (PROTOCOL.md section 4, step 4).

        After a restore, every held version the snapshot lacks or has older is journaled
        again first (the server lost it); then every id the snapshot lacks and the journal
        does not hold is dropped; then the markers are stored. Returns (dropped, requeued).
        """
        with self.transaction():
            requeued = self._requeue_missing(snapshot) if restore else 0
            changes = self._reset_drop(set(snapshot))
            self._store_markers(markers)
        return changes, requeued

    def reset_drop(self, snapshot_ids: set[str]) -> list[Change]:
        """Drop every id the snapshot lacks that is not pending in the journal."""
        with self.transaction():
            return self._reset_drop(snapshot_ids)

    def requeue_missing(self, snapshot: Mapping[str, VersionKey]) -> int:
        """Journal every held version the snapshot lacks or has older."""
        with self.transaction():
            return self._requeue_missing(snapshot)

    def _reset_drop(self, snapshot_ids: set[str]) -> list[Change]:
        changes: list[Change] = []
        pending = {row[0] for row in self._db.execute("SELECT doc_id FROM journal")}
        for table in ("documents", "tombstones"):
            held = [row[0] for row in self._db.execute(f"SELECT doc_id FROM {table}")]  # noqa: S608
            for doc_id in held:
                if doc_id in snapshot_ids or doc_id in pending:
                    continue
                self._db.execute(f"DELETE FROM {table} WHERE doc_id = ?", (doc_id,))  # noqa: S608
                if table == "documents":
                    changes.append(Change(doc_id, "remote", None))
        return changes

    def _requeue_missing(self, snapshot: Mapping[str, VersionKey]) -> int:
        queued = 0
        pending = {row[0] for row in self._db.execute("SELECT doc_id FROM journal")}
        ids = [row[0] for row in self._db.execute("SELECT doc_id FROM documents")]
        ids += [row[0] for row in self._db.execute("SELECT doc_id FROM tombstones")]
        for doc_id in ids:
            if doc_id in pending:
                continue
            held = self._held(doc_id)
            if held is None:
                continue
            known = snapshot.get(doc_id)
            if known is None or held.key() > known:
                self._journal_put(held)
                queued += 1
        return queued

    # -- range checks (datagate_replica/ranges.py) -----------------------------------------

    def held_versions(self) -> list[tuple[str, int, int, bool]]:
        """(id, revision, modified, deleted) of every document and tombstone held."""
        rows = [
            (str(r[0]), int(r[1]), int(r[2]), False)
            for r in self._read("SELECT doc_id, revision, modified FROM documents")
        ]
        rows += [
            (str(r[0]), int(r[1]), int(r[2]), True)
            for r in self._read("SELECT doc_id, revision, deleted_at FROM tombstones")
        ]
        return rows

    def pending_ids(self) -> set[str]:
        return {str(row[0]) for row in self._read("SELECT doc_id FROM journal")}

    def repair_local(self, *, drop: Iterable[str], push: Iterable[str]) -> list[Change]:
        """After a range check, in one transaction: forget the ids the server does not hold
        (`drop`), and journal again the held versions of `push` (the server lacks them or
        holds them older), each unless it is pending in the journal already."""
        changes: list[Change] = []
        with self.transaction():
            pending = {row[0] for row in self._db.execute("SELECT doc_id FROM journal")}
            for doc_id in drop:
                if doc_id in pending:
                    continue
                gone = self._db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
                if gone.rowcount:
                    changes.append(Change(doc_id, "remote", None))
                self._db.execute("DELETE FROM tombstones WHERE doc_id = ?", (doc_id,))
            for doc_id in push:
                held = self._held(doc_id)
                if held is not None and doc_id not in pending:
                    self._journal_put(held)
        return changes
