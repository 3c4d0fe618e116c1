"""Markers: a replica's position in a collection, opaque to clients (PROTOCOL.md section 3).

`collectionMarker` is the collection seq the replica has everything up to. `tombstoneMarker`
is the collection's *epoch*: a number drawn when the collection is created and drawn again when
it is restored from an export, so a replica can tell that the server went back in time even when
the seq has since moved past its own (docs/protocol.md, "Markers"). Zeros mean "never synced".

Pure functions, no Django.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def new_epoch() -> int:
    """A fresh, non-zero epoch that fits in JSON numbers everywhere (below 2**31)."""
    return secrets.randbelow(2**31 - 2) + 1


@dataclass(frozen=True, slots=True)
class Markers:
    seq: int = 0
    epoch: int = 0

    def to_wire(self) -> dict[str, int]:
        return {"collectionMarker": self.seq, "tombstoneMarker": self.epoch}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> Markers:
        """Markers from the wire; None or missing values count as zero (first sync)."""
        if not raw:
            return cls()
        seq = raw.get("collectionMarker") or 0
        epoch = raw.get("tombstoneMarker") or 0
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("collectionMarker must be a non-negative integer")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError("tombstoneMarker must be a non-negative integer")
        return cls(seq, epoch)

    @property
    def is_zero(self) -> bool:
        return self.seq == 0 and self.epoch == 0


class PullStart(enum.Enum):
    """How a pull begins for a replica holding `client` markers."""

    FROM_MARKER = "from_marker"  # send every change after client.seq
    RESET_HORIZON = "reset_horizon"  # tombstones it never saw were collected: full snapshot
    RESET_RESTORE = "reset_restore"  # the server went back in time: snapshot, client re-pushes


def pull_start(*, client: Markers, last_seq: int, purge_seq: int, epoch: int) -> PullStart:
    """Decide how to start a pull (PROTOCOL.md section 4, step 4)."""
    if client.is_zero:
        return PullStart.FROM_MARKER
    if client.epoch != 0 and client.epoch != epoch:
        return PullStart.RESET_RESTORE
    if client.seq > last_seq:
        return PullStart.RESET_RESTORE
    if client.seq < purge_seq:
        return PullStart.RESET_HORIZON
    return PullStart.FROM_MARKER
