"""Stamping local changes, and the conflict rule (DataGate PROTOCOL.md section 5).

Every version of a document is ordered by the key `(_modified, kind, _revision, _origin)`,
where a delete ranks above a write at the same millisecond and, for a delete, only its time
matters. The highest key wins on every node, whatever order versions arrive in, so replicas
converge. The server applies the same rule; this module is the SDK's own copy of it (the SDK
imports nothing of the server).

`_modified` is stamped hybrid-logical-clock style: `max(now, highest time seen + 1)`. A local
edit made after this replica has seen a version (its own or one pulled from the server) always
orders after that version, even when the local wall clock is behind the writer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

WRITE = 0
DELETE = 1


class VersionKey(NamedTuple):
    modified: int
    kind: int
    revision: int
    origin: str


def version_key(*, kind: int, modified: int, revision: int = 0, origin: str = "") -> VersionKey:
    """The ordering key of one version; a delete's key holds only its time."""
    if kind == DELETE:
        return VersionKey(modified, DELETE, 0, "")
    return VersionKey(modified, WRITE, revision, origin)


def incoming_wins(incoming: VersionKey, current: VersionKey | None) -> bool:
    """True when `incoming` must replace `current` (None: nothing held yet).

    An equal key is the same version arriving again: it changes nothing, so applying the same
    change twice is harmless.
    """
    return current is None or incoming > current


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """Stamps `_modified` values: never below the wall clock, always above anything seen.

    `seen` is the highest `_modified` this replica has written or received; the store persists
    it so the guarantee survives restarts.
    """

    def __init__(self, *, seen: int = 0, now: Callable[[], int] = wall_clock_ms) -> None:
        self.seen = seen
        self._now = now

    def observe(self, modified: int) -> None:
        """Record a version this replica has seen."""
        if modified > self.seen:
            self.seen = modified

    def stamp(self) -> int:
        """A fresh `_modified` that orders after everything observed so far."""
        stamp = max(self._now(), self.seen + 1)
        self.seen = stamp
        return stamp
