"""The chaos checker on hand-made histories: each broken promise must fail the run.

No servers here: chaos/checker.py is pure, so each rule is shown with the smallest history
that breaks it, next to one that keeps it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.checker import check, render, witness

RUN = {"kind": "run", "t": 0.0, "seed": 7, "convergence_bound": 30}


def op(doc: str, key: list[Any], value: Any = None, client: str = "r1", **more: Any) -> dict:
    return {"kind": "op", "t": 1.0, "client": client, "doc": doc, "key": key, "value": value}


def ack(doc: str, key: list[Any], value: Any = None, client: str = "r1", **more: Any) -> dict:
    return {
        "kind": "ack",
        "t": 2.0,
        "client": client,
        "doc": doc,
        "key": key,
        "value": value,
        "via": "sdk",
        **more,
    }


def final(documents: dict[str, Any] | None = None, tombstones: dict[str, int] | None = None):
    return {
        "kind": "final_state",
        "t": 9.0,
        "documents": documents or {},
        "tombstones": tombstones or {},
    }


def rules(events: list[dict[str, Any]]) -> list[str]:
    return [v.rule for v in check(events).violations]


def test_a_history_that_keeps_every_promise_passes() -> None:
    events = [
        RUN,
        op("a", [100, 0, 1, "r1"], "v1"),
        ack("a", [100, 0, 1, "r1"], "v1"),
        op("a", [105, 0, 1, "r2"], "v2", client="r2"),
        ack("a", [105, 0, 1, "r2"], "v2", client="r2"),
        op("b", [100, 0, 1, "r1"], "w"),
        ack("b", [100, 0, 1, "r1"], "w"),
        op("b", [110, 1, 0, ""]),
        ack("b", [110, 1, 0, ""]),
        {"kind": "feed", "t": 3, "client": "r1", "held": 0, "start": 0, "end": 2},
        {"kind": "feed", "t": 4, "client": "r1", "held": 2, "start": 2, "end": 4},
        {"kind": "converged", "t": 5, "client": "r1", "epoch": 1, "seconds": 1.5},
        {"kind": "fault", "t": 2.5, "fault": "kill_daphne", "phase": "start", "target": "a"},
        final({"a": {"key": [105, 0, 1, "r2"], "value": "v2"}}, {"b": 110}),
    ]
    report = check(events)
    assert report.ok, report.violations
    assert report.acked == 3
    assert report.acked_deletes == 1
    assert report.faults == {"kill_daphne": 1}
    assert report.summary()["convergence p50 s"] == 1.5
    assert render(report, events).startswith("PASS")


def test_an_acknowledged_write_missing_at_the_end_is_lost() -> None:
    events = [RUN, op("a", [100, 0, 1, "r1"], "v1"), ack("a", [100, 0, 1, "r1"], "v1"), final()]
    assert rules(events) == ["lost"]


def test_an_acknowledged_write_under_an_older_version_is_lost() -> None:
    events = [
        RUN,
        op("a", [90, 0, 1, "r2"], "old", client="r2"),
        op("a", [100, 0, 2, "r1"], "new"),
        ack("a", [100, 0, 2, "r1"], "new"),
        final({"a": {"key": [90, 0, 1, "r2"], "value": "old"}}),
    ]
    assert rules(events) == ["lost"]


def test_the_same_version_with_another_value_is_lost() -> None:
    events = [
        RUN,
        op("a", [100, 0, 1, "r1"], "mine"),
        ack("a", [100, 0, 1, "r1"], "mine"),
        final({"a": {"key": [100, 0, 1, "r1"], "value": "other"}}),
    ]
    assert sorted(rules(events)) == ["lost", "phantom"]


def test_a_write_that_lost_a_conflict_to_a_later_delete_is_superseded_not_lost() -> None:
    events = [
        RUN,
        op("a", [100, 0, 1, "r1"], "v"),
        ack("a", [100, 0, 1, "r1"], "v"),
        op("a", [100, 1, 0, ""], client="r2"),
        ack("a", [100, 1, 0, ""], client="r2"),
        final(tombstones={"a": 100}),  # a delete ranks above a write at the same millisecond
    ]
    assert rules(events) == []


def test_an_acknowledged_delete_that_comes_back_is_a_resurrection() -> None:
    events = [
        RUN,
        op("a", [100, 0, 1, "r1"], "v"),
        ack("a", [100, 0, 1, "r1"], "v"),
        op("a", [200, 1, 0, ""], client="http"),
        ack("a", [200, 1, 0, ""], client="http", bound=True),
        final({"a": {"key": [100, 0, 1, "r1"], "value": "v"}}),
    ]
    assert rules(events) == ["resurrected"]


def test_a_document_written_after_an_acknowledged_delete_is_no_resurrection() -> None:
    events = [
        RUN,
        op("a", [200, 1, 0, ""]),
        ack("a", [200, 1, 0, ""]),
        op("a", [300, 0, 2, "r2"], "again", client="r2"),
        final({"a": {"key": [300, 0, 2, "r2"], "value": "again"}}),
    ]
    assert rules(events) == []


def test_an_acknowledged_delete_whose_tombstone_vanished_is_lost() -> None:
    events = [RUN, op("a", [200, 1, 0, ""]), ack("a", [200, 1, 0, ""]), final()]
    assert rules(events) == ["lost"]


def test_a_final_version_nobody_wrote_is_a_phantom() -> None:
    events = [RUN, final({"a": {"key": [100, 0, 1, "ghost"], "value": 1}})]
    assert rules(events) == ["phantom"]


def test_acknowledged_writes_without_a_final_state_fail() -> None:
    events = [RUN, op("a", [100, 0, 1, "r1"], 1), ack("a", [100, 0, 1, "r1"], 1)]
    assert rules(events) == ["lost"]


@pytest.mark.parametrize(
    ("held", "start", "end", "rule"),
    [(5, 7, 9, "gap"), (5, 3, 9, "duplicate"), (5, 5, 4, "duplicate")],
)
def test_a_feed_that_does_not_start_where_the_client_is_fails(
    held: int, start: int, end: int, rule: str
) -> None:
    events = [
        RUN,
        {"kind": "feed", "t": 1, "client": "r1", "held": held, "start": start, "end": end},
    ]
    assert rules(events) == [rule]


def test_a_client_that_did_not_converge_within_the_bound_fails() -> None:
    events = [
        RUN,
        {"kind": "converged", "t": 1, "client": "r1", "epoch": 1, "seconds": None},
        {"kind": "converged", "t": 1, "client": "r2", "epoch": 1, "seconds": 31.0},
        {"kind": "converged", "t": 1, "client": "r3", "epoch": 1, "seconds": 2.0},
    ]
    assert rules(events) == ["not_converged", "not_converged"]


def subscribed(committed: int, next_offset: int, batch: int = 10, **more: Any) -> dict:
    return {
        "kind": "subscribed",
        "t": 1,
        "consumer": "c1",
        "topic": "t",
        "committed": committed,
        "next_offset": next_offset,
        "batch_size": batch,
        "from": "committed",
        **more,
    }


def deliver(offset: int, commit_sent: int = 0) -> dict:
    return {
        "kind": "deliver",
        "t": 2,
        "consumer": "c1",
        "topic": "t",
        "offset": offset,
        "message_id": f"m{offset}",
        "commit_sent": commit_sent,
    }


def commit(offset: int) -> dict:
    return {"kind": "commit", "t": 3, "consumer": "c1", "topic": "t", "offset": offset}


def publish(offset: int, message_id: str | None = None) -> dict:
    return {
        "kind": "publish",
        "t": 1,
        "topic": "t",
        "message_id": message_id or f"m{offset}",
        "offset": offset,
    }


def final_topic(*offsets: int) -> dict:
    return {"kind": "final_topic", "t": 9, "topic": "t", "messages": {o: f"m{o}" for o in offsets}}


def test_a_consumer_history_that_keeps_the_topic_rules_passes() -> None:
    events = [
        RUN,
        publish(1),
        publish(2),
        publish(3),
        subscribed(0, 1),
        deliver(1),
        deliver(2),
        commit(2),
        subscribed(2, 3),
        deliver(3, commit_sent=2),
        commit(3),
        final_topic(1, 2, 3),
    ]
    assert rules(events) == []


def test_a_commit_that_moves_backwards_fails() -> None:
    assert rules([RUN, subscribed(0, 1), commit(5), commit(3)]) == ["offset_backwards"]


def test_a_subscribe_that_forgets_a_commit_fails() -> None:
    events = [RUN, subscribed(0, 1), commit(5), subscribed(3, 4)]
    assert rules(events) == ["offset_backwards"]


def test_a_subscription_from_committed_that_skips_past_the_commit_fails() -> None:
    assert rules([RUN, subscribed(4, 7)]) == ["skipped_commit"]


def test_a_delivery_that_skips_an_offset_fails() -> None:
    assert rules([RUN, subscribed(0, 1), deliver(1), deliver(3)]) == ["skipped_commit"]


def test_a_consumer_that_stops_committing_is_not_sent_past_two_batches() -> None:
    events = [RUN, subscribed(0, 1, batch=2), *(deliver(n) for n in range(1, 6))]
    assert rules(events) == ["past_window"]


def test_an_acknowledged_publish_missing_at_the_end_is_lost() -> None:
    assert rules([RUN, publish(1), publish(2), final_topic(1)]) == ["publish_lost"]


def test_one_message_id_acknowledged_at_two_offsets_fails() -> None:
    events = [RUN, publish(1, "same"), publish(2, "same"), final_topic()]
    assert "publish_lost" in rules(events)


def test_a_failure_prints_the_seed_and_the_subjects_history() -> None:
    events = [
        RUN,
        op("a", [100, 0, 1, "r1"], "v"),
        ack("a", [100, 0, 1, "r1"], "v"),
        op("other", [100, 0, 1, "r1"], "x"),
        {"kind": "fault", "t": 1.5, "fault": "reset", "phase": "start", "target": "proxy-a"},
        final(),
    ]
    report = check(events)
    text = render(report, events)
    assert "FAIL (seed 7)" in text
    assert "make chaos SEED=7" in text
    shown = witness(events, report.violations[0])
    assert [e["kind"] for e in shown] == ["op", "fault", "ack", "final_state"]
    assert all(e.get("doc") in (None, "a") for e in shown)


keys = st.tuples(
    st.integers(100, 110), st.sampled_from([0, 1]), st.integers(1, 3), st.sampled_from("xyz")
).map(lambda k: [k[0], k[1], 0, ""] if k[1] == 1 else list(k))


@given(st.lists(keys, min_size=1, max_size=8))
def test_the_highest_acknowledged_version_at_the_end_always_passes(versions: list) -> None:
    """Whatever the order of acks, ending on the highest key keeps every promise."""
    from chaos.checker import as_key

    events: list[dict[str, Any]] = [RUN]
    for n, key in enumerate(versions):
        value = None if key[1] == 1 else f"{key}"
        events += [op("d", key, value, client=f"c{n}"), ack("d", key, value, client=f"c{n}")]
    top = max(versions, key=as_key)
    if top[1] == 1:
        events.append(final(tombstones={"d": top[0]}))
    else:
        events.append(final({"d": {"key": top, "value": f"{top}"}}))
    assert check(events).ok
    # And ending on anything lower than an acknowledged version fails.
    lower = [k for k in versions if as_key(k) < as_key(top)]
    if lower:
        low = max(lower, key=as_key)
        end = (
            final(tombstones={"d": low[0]})
            if low[1] == 1
            else final({"d": {"key": low, "value": f"{low}"}})
        )
        assert not check([*events[:-1], end]).ok


def test_an_http_write_whose_answer_was_lost_is_no_phantom() -> None:
    """The attempt has no key (the server stamps it); its value is what identifies it."""
    events = [
        RUN,
        {"kind": "op", "t": 1, "client": "http", "doc": "a", "key": None, "value": {"v": "x1"}},
        final({"a": {"key": [100, 0, 3, "server"], "value": {"v": "x1"}}}),
    ]
    assert rules(events) == []
