"""CouchDB revision ids over DataGate's versions: pure functions, no Django.

Theory of operation (docs/decisions/0009-couchdb-writes-take-their-place-by-arrival.md):

- Each document keeps one *winning path*: its revision ids (`N-hash`), newest first, at most
  `REVS_LIMIT` of them, and the *closed* branches: the paths that lost a conflict, each ending
  in a deletion revision (the CouchDB way of closing a branch), at most `CLOSED_LIMIT`.
- The history describes one stored version: the one at its `seq`. A version written through
  another door (a websocket replica, the HTTP API, the console) has a newer seq; its revision
  id is derived from it (`synthetic_rev`), deterministically, as a child of the history's head,
  so that every reader computes the same id and PouchDB sees one unbroken path.
- A conflict is decided by DataGate's rule (replication/protocol/conflicts.py), the winner websocket
  replicas get; the loser's branch is closed by a deletion revision (`close_path`), so PouchDB
  replicas pick the same winner and keep no `_conflicts`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

REVS_LIMIT = 100
CLOSED_LIMIT = 20
REV_HASH_LENGTH = 32
REV_MAX_LENGTH = 64


class BadRevision(ValueError):
    """A revision id or `_revisions` object that is not CouchDB's form."""


def _digest(*parts: object) -> str:
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def rev_generation(rev: str) -> int:
    return int(rev.split("-", 1)[0])


def parse_rev(raw: object) -> str:
    """A revision id `N-hash` (N >= 1, a non-empty hash), or BadRevision."""
    if not isinstance(raw, str) or len(raw) > REV_MAX_LENGTH or "-" not in raw:
        raise BadRevision(f"invalid revision {str(raw)[:40]!r}")
    generation, digest = raw.split("-", 1)
    if not generation.isdigit() or int(generation) < 1 or not digest or len(generation) > 12:
        raise BadRevision(f"invalid revision {raw[:40]!r}")
    return raw


def path_from_doc(doc: Mapping[str, Any]) -> list[str]:
    """The path a replicated document brings (`_revisions`, else just its `_rev`), newest first."""
    rev = parse_rev(doc.get("_rev"))
    revisions = doc.get("_revisions")
    if revisions is None:
        return [rev]
    if not isinstance(revisions, Mapping):
        raise BadRevision("_revisions must be an object")
    start, ids = revisions.get("start"), revisions.get("ids")
    if (
        not isinstance(start, int)
        or isinstance(start, bool)
        or not isinstance(ids, list)
        or not ids
    ):
        raise BadRevision("_revisions needs start and ids")
    if start != rev_generation(rev) or start - len(ids) < 0:
        raise BadRevision("_revisions does not match _rev")
    path = [parse_rev(f"{start - index}-{digest}") for index, digest in enumerate(ids)]
    if path[0] != rev:
        raise BadRevision("_revisions does not match _rev")
    return path[:REVS_LIMIT]


def revisions_of(path: list[str]) -> dict[str, Any]:
    """CouchDB's `_revisions` object for a path (newest first)."""
    return {"start": rev_generation(path[0]), "ids": [rev.split("-", 1)[1] for rev in path]}


def new_edit_rev(parent: str | None, *, deleted: bool, body: Mapping[str, Any]) -> str:
    """The revision id of an app's own edit (new_edits=true): deterministic, like CouchDB's."""
    generation = rev_generation(parent) + 1 if parent else 1
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return f"{generation}-{_digest('edit', parent or '', deleted, encoded)}"


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """What a revision id is derived from: one stored document or tombstone."""

    doc_id: str
    deleted: bool
    revision: int
    stamp: int  # _modified, or the delete time
    origin: str
    seq: int


@dataclass(slots=True)
class History:
    """The CouchDB view of one document: see the module docstring."""

    seq: int
    path: list[str]
    closed: list[list[str]] = field(default_factory=list)
    deleted: bool = False

    @property
    def head(self) -> str:
        return self.path[0]

    def leaves(self) -> list[str]:
        """The winning revision first, then each closed branch's deletion revision."""
        return [self.head, *(branch[0] for branch in self.closed)]

    def knows(self, rev: str) -> bool:
        return rev in self.path or any(rev in branch for branch in self.closed)

    def branch_of(self, rev: str) -> tuple[list[str], bool] | None:
        """The leaf path that holds `rev` and whether its leaf is deleted, or None."""
        if rev in self.path:
            return self.path, self.deleted
        for branch in self.closed:
            if rev in branch:
                return branch, True
        return None


def synthetic_rev(version: StoredVersion, generation: int) -> str:
    return f"{generation}-" + _digest(
        "dg", version.doc_id, version.deleted, version.revision, version.stamp, version.origin
    )


def _filler_rev(doc_id: str, generation: int, below: str) -> str:
    return f"{generation}-" + _digest("gap", doc_id, generation, below)


def current_view(stored: StoredVersion | None, history: History | None) -> History | None:
    """The CouchDB view of a document now: its history if it describes the stored version,
    else the history extended by the version another door wrote (module docstring).

    A history without a stored version belongs to a document whose tombstone GC collected:
    its head is then deleted, whatever it was.
    """
    if stored is None:
        if history is None:
            return None
        return History(history.seq, history.path, history.closed, deleted=True)
    if history is not None and history.seq == stored.seq:
        return History(history.seq, history.path, history.closed, deleted=stored.deleted)
    below = history.path if history is not None else []
    top = rev_generation(below[0]) if below else 0
    generation = max(stored.revision, top + 1)
    fillers = [
        _filler_rev(stored.doc_id, g, below[0] if below else "")
        for g in range(generation - 1, top, -1)
    ]
    path = [synthetic_rev(stored, generation), *fillers, *below][:REVS_LIMIT]
    closed = history.closed if history is not None else []
    return History(stored.seq, path, list(closed), deleted=stored.deleted)


def close_path(path: list[str], *, deleted: bool) -> list[str]:
    """A losing branch, closed: itself if its leaf is a deletion, else a deletion added."""
    if deleted:
        return path[:REVS_LIMIT]
    closing = f"{rev_generation(path[0]) + 1}-{_digest('closed', path[0])}"
    return [closing, *path][:REVS_LIMIT]


def add_closed(closed: list[list[str]], branch: list[str]) -> list[list[str]]:
    kept = [b for b in closed if b[0] != branch[0] and b[0] not in branch]
    return [branch, *kept][:CLOSED_LIMIT]


def extend(path: list[str], onto: list[str]) -> list[str]:
    """`path` (which holds `onto`'s head) joined with what `onto` knows below it."""
    index = path.index(onto[0])
    return [*path[:index], *onto][:REVS_LIMIT]


def missing_revs(history: History | None, revs: Iterable[str]) -> list[str]:
    """The revisions of `revs` this server does not hold (`_revs_diff`)."""
    return [rev for rev in dict.fromkeys(revs) if history is None or not history.knows(rev)]
