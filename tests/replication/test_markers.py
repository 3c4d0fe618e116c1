"""How a pull starts for the markers a replica holds."""

from __future__ import annotations

import pytest

from replication.protocol.markers import Markers, PullStart, new_epoch, pull_start


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (Markers(0, 0), PullStart.FROM_MARKER),
        (Markers(50, 7), PullStart.FROM_MARKER),
        (Markers(50, 0), PullStart.FROM_MARKER),
        (Markers(5, 7), PullStart.RESET_HORIZON),
        (Markers(150, 7), PullStart.RESET_RESTORE),
        (Markers(50, 8), PullStart.RESET_RESTORE),
    ],
)
def test_pull_start(client: Markers, expected: PullStart) -> None:
    assert pull_start(client=client, last_seq=100, purge_seq=10, epoch=7) is expected


def test_markers_round_trip_and_refuse_nonsense() -> None:
    assert Markers.from_wire(Markers(3, 9).to_wire()) == Markers(3, 9)
    assert Markers.from_wire(None) == Markers()
    assert Markers.from_wire({"collectionMarker": None, "tombstoneMarker": None}) == Markers()
    with pytest.raises(ValueError, match="collectionMarker must be a non-negative integer"):
        Markers.from_wire({"collectionMarker": -1})
    with pytest.raises(ValueError, match="collectionMarker must be a non-negative integer"):
        Markers.from_wire({"collectionMarker": "3"})
    assert 0 < new_epoch() < 2**31
