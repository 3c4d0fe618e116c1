"""The conflict rule (PROTOCOL.md section 5), as pure functions with no Django.

Every version of a document is ordered by `(_modified, kind, _revision, _origin)`, where a
delete ranks above a write at the same millisecond. The highest key wins on every node, in
whatever order versions arrive, so replicas converge. For a delete only its time matters: two
deletes at the same millisecond are the same outcome, so their key drops revision and origin.
"""

from __future__ import annotations

from typing import NamedTuple

WRITE = 0
DELETE = 1


class VersionKey(NamedTuple):
    modified: int
    kind: int
    revision: int
    origin: str


def version_key(*, kind: int, modified: int, revision: int, origin: str) -> VersionKey:
    if kind == DELETE:
        return VersionKey(modified, DELETE, 0, "")
    return VersionKey(modified, WRITE, revision, origin)


def incoming_wins(incoming: VersionKey, current: VersionKey | None) -> bool:
    """True when `incoming` must replace `current` (None: nothing stored yet).

    An equal key is the same version arriving again: it changes nothing, which is what makes
    applying a chunk twice idempotent.
    """
    return current is None or incoming > current
