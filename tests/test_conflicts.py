"""The conflict rule as a pure function: properties that make replicas converge."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from replication.changes import Version, newest_per_id
from replication.conflicts import DELETE, WRITE, incoming_wins, version_key

versions = st.builds(
    Version,
    doc_id=st.sampled_from(["a", "b", "c"]),
    kind=st.sampled_from([WRITE, DELETE]),
    modified=st.integers(0, 5),
    revision=st.integers(1, 3),
    origin=st.sampled_from(["r1", "r2"]),
    body=st.none(),
)


def test_a_delete_beats_a_write_at_the_same_millisecond() -> None:
    write = version_key(kind=WRITE, modified=10, revision=99, origin="zz")
    delete = version_key(kind=DELETE, modified=10, revision=1, origin="a")
    assert incoming_wins(delete, write)
    assert not incoming_wins(write, delete)


def test_a_later_write_beats_an_earlier_delete() -> None:
    delete = version_key(kind=DELETE, modified=10, revision=5, origin="a")
    write = version_key(kind=WRITE, modified=11, revision=1, origin="a")
    assert incoming_wins(write, delete)


def test_two_deletes_at_the_same_time_are_the_same_outcome() -> None:
    first = version_key(kind=DELETE, modified=10, revision=1, origin="a")
    second = version_key(kind=DELETE, modified=10, revision=7, origin="b")
    assert first == second
    assert not incoming_wins(second, first)


def test_revision_then_origin_break_ties_between_writes() -> None:
    low = version_key(kind=WRITE, modified=10, revision=1, origin="b")
    high = version_key(kind=WRITE, modified=10, revision=2, origin="a")
    assert incoming_wins(high, low)
    assert incoming_wins(version_key(kind=WRITE, modified=10, revision=1, origin="c"), low)


def test_the_same_version_again_changes_nothing() -> None:
    key = version_key(kind=WRITE, modified=10, revision=1, origin="a")
    assert not incoming_wins(key, key)


@given(st.lists(versions, max_size=8))
def test_the_winner_does_not_depend_on_arrival_order(batch: list[Version]) -> None:
    expected = {k: v.key() for k, v in newest_per_id(batch).items()}
    for order in itertools.islice(itertools.permutations(batch), 30):
        assert {k: v.key() for k, v in newest_per_id(order).items()} == expected


@given(st.lists(versions, max_size=8), st.lists(versions, max_size=8))
def test_merging_in_two_steps_equals_merging_at_once(
    left: list[Version], right: list[Version]
) -> None:
    stepwise = newest_per_id(list(newest_per_id(left).values()) + right)
    at_once = newest_per_id(left + right)
    assert {k: v.key() for k, v in stepwise.items()} == {k: v.key() for k, v in at_once.items()}
