"""The SDK's hybrid clock and its copy of the conflict rule (PROTOCOL.md section 5)."""

from __future__ import annotations

import itertools

from datagate_replica.clock import DELETE, WRITE, HybridClock, incoming_wins, version_key
from hypothesis import given
from hypothesis import strategies as st


def test_stamp_follows_the_wall_clock_when_it_is_ahead() -> None:
    clock = HybridClock(seen=100, now=lambda: 5_000)
    assert clock.stamp() == 5_000


def test_stamp_orders_after_a_seen_version_even_when_the_local_clock_is_behind() -> None:
    clock = HybridClock(now=lambda: 1_000)
    clock.observe(9_000)  # a version written by a replica whose clock is 8 s ahead
    assert clock.stamp() == 9_001
    assert clock.stamp() == 9_002  # and every later stamp keeps moving forward


def test_observing_an_older_version_does_not_move_the_clock_back() -> None:
    clock = HybridClock(seen=9_000, now=lambda: 1_000)
    clock.observe(10)
    assert clock.stamp() == 9_001


def test_a_delete_beats_a_write_at_the_same_millisecond() -> None:
    write = version_key(kind=WRITE, modified=50, revision=9, origin="zzz")
    delete = version_key(kind=DELETE, modified=50, revision=1, origin="a")
    assert incoming_wins(delete, write)
    assert not incoming_wins(write, delete)


def test_a_later_write_beats_an_earlier_delete() -> None:
    delete = version_key(kind=DELETE, modified=50)
    write = version_key(kind=WRITE, modified=51, revision=1, origin="a")
    assert incoming_wins(write, delete)


def test_writes_at_the_same_millisecond_order_by_revision_then_origin() -> None:
    low = version_key(kind=WRITE, modified=50, revision=2, origin="b")
    high_revision = version_key(kind=WRITE, modified=50, revision=3, origin="a")
    high_origin = version_key(kind=WRITE, modified=50, revision=2, origin="c")
    assert incoming_wins(high_revision, low)
    assert incoming_wins(high_origin, low)


def test_two_deletes_at_the_same_time_are_the_same_outcome() -> None:
    one = version_key(kind=DELETE, modified=50, revision=1, origin="a")
    other = version_key(kind=DELETE, modified=50, revision=7, origin="b")
    assert one == other
    assert not incoming_wins(one, other)


def test_the_same_version_arriving_again_changes_nothing() -> None:
    key = version_key(kind=WRITE, modified=50, revision=2, origin="a")
    assert not incoming_wins(key, key)
    assert incoming_wins(key, None)


versions = st.tuples(
    st.sampled_from([WRITE, DELETE]),
    st.integers(0, 20),
    st.integers(1, 4),
    st.sampled_from(["a", "b", "c"]),
)


@given(st.lists(versions, min_size=1, max_size=6))
def test_every_arrival_order_converges_on_the_same_winner(
    raw: list[tuple[int, int, int, str]],
) -> None:
    keys = [version_key(kind=k, modified=m, revision=r, origin=o) for k, m, r, o in raw]
    outcomes = set()
    for order in itertools.islice(itertools.permutations(keys), 50):
        held = None
        for key in order:
            if incoming_wins(key, held):
                held = key
        outcomes.add(held)
    assert len(outcomes) == 1
