"""The conflict rule as a pure function: properties that make replicas converge.

Every case of spec/conflicts.json runs here against the server's copy of the rule, and in
sdk/tests/test_conflict_cases.py against the SDK's, so the two copies cannot drift.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.changes import Version, newest_per_id
from replication.protocol.conflicts import DELETE, WRITE, VersionKey, incoming_wins, version_key


def _cases_file() -> Path:
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "spec" / "conflicts.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("spec/conflicts.json")


CASES: list[dict[str, Any]] = json.loads(_cases_file().read_text(encoding="utf-8"))["cases"]
KINDS = {"write": WRITE, "delete": DELETE}


def _version(raw: dict[str, Any]) -> Version:
    kind = KINDS[raw["kind"]]
    body = {"n": 1} if kind == WRITE else None
    return Version("doc", kind, raw["modified"], raw["revision"], raw["origin"], body)


def _key(raw: dict[str, Any]) -> VersionKey:
    return version_key(
        kind=KINDS[raw["kind"]],
        modified=raw["modified"],
        revision=raw["revision"],
        origin=raw["origin"],
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_shared_case_picks_the_expected_winner(case: dict[str, Any]) -> None:
    incoming = _key(case["incoming"])
    current = None if case["current"] is None else _key(case["current"])
    assert incoming_wins(incoming, current) == (case["winner"] == "incoming")
    if current is None:
        return
    assert incoming_wins(current, incoming) == (case["winner"] == "current")
    assert (incoming == current) == (case["winner"] == "same")
    winner = case["incoming"] if case["winner"] == "incoming" else case["current"]
    for order in ((case["current"], case["incoming"]), (case["incoming"], case["current"])):
        assert newest_per_id([_version(raw) for raw in order])["doc"].key() == _key(winner)


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
