"""The pure topics protocol: the session's rules and the subscription window, no database."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topics.protocol import (
    CONNECT,
    LIST,
    PUBLISH,
    SUBSCRIBE,
    Publish,
    Range,
    State,
    Subscribe,
    SubscriptionWindow,
    TopicSession,
)


def frame(message_type: str, **body: Any) -> str:
    header = {"id": "m1", "messageType": message_type, "tenant": "acme", "transactionId": "t"}
    return json.dumps({"header": header, **body})


def connected_session() -> TopicSession:
    session = TopicSession(tenant="acme", server_id="srv", max_publish=3)
    session.connected(user_name="alice", transaction_id="t")
    return session


@pytest.mark.parametrize(
    ("text", "code", "fatal_before", "fatal_after"),
    [
        ("nope", "DG-2001", True, False),
        ("[1, 2]", "DG-2002", True, False),
        (frame("datagate.topic.bogus"), "DG-2003", True, False),
        (json.dumps({"header": {"id": 5, "messageType": LIST}}), "DG-2004", True, False),
        (frame(SUBSCRIBE, topic=""), "DG-2006", True, False),
    ],
)
def test_bad_frames_are_fatal_only_before_connect(
    text: str, code: str, fatal_before: bool, fatal_after: bool
) -> None:
    opening = TopicSession(tenant="acme", server_id="srv").receive(text)
    assert opening.error is not None
    assert (opening.error.code, opening.error.fatal) == (code, fatal_before)
    after = connected_session().receive(text)
    assert after.error is not None
    expected = "DG-2004" if code == "DG-2006" else code
    assert (after.error.code, after.error.fatal) == (expected, fatal_after)


def test_connect_after_connect_and_foreign_headers_are_fatal() -> None:
    session = connected_session()
    again = session.receive(frame(CONNECT, authToken="x", device="d"))
    assert again.error is not None
    assert (again.error.code, again.error.fatal) == ("DG-2006", True)
    other = json.dumps({"header": {"id": "1", "messageType": LIST, "tenant": "globex"}})
    mismatch = session.receive(other)
    assert mismatch.error is not None
    assert (mismatch.error.code, mismatch.error.fatal) == ("DG-2005", True)
    assert mismatch.error.close_code == 4409


def test_messages_parse_into_typed_values() -> None:
    session = connected_session()
    sub = session.receive(frame(SUBSCRIBE, topic="news", **{"from": {"start": 3}}, batchSize=7))
    assert isinstance(sub.message, Subscribe)
    assert sub.message.start_from == Range(start=3, end=None)
    assert sub.correlation_id == "m1"
    default = session.receive(frame(SUBSCRIBE, topic="news")).message
    assert isinstance(default, Subscribe)
    assert default.start_from == "committed"
    pub = session.receive(frame(PUBLISH, topic="news", messages=[{"messageId": "a"}]))
    assert isinstance(pub.message, Publish)
    assert pub.message.messages[0].payload is None


def test_a_publish_over_the_limit_is_refused_whole() -> None:
    too_many = [{"messageId": str(i)} for i in range(4)]
    inbound = connected_session().receive(frame(PUBLISH, topic="t", messages=too_many))
    assert inbound.error is not None
    assert inbound.error.code == "DG-2004"
    assert "at most 3" in inbound.error.text


def test_the_session_closes() -> None:
    session = connected_session()
    session.close()
    assert session.state is State.CLOSED
    inbound = session.receive(frame(LIST))
    assert inbound.error is not None
    assert inbound.error.fatal


def window(batch: int = 10, share: float = 0.5, last: int = 100, **kw: Any) -> SubscriptionWindow:
    return SubscriptionWindow(
        topic="t",
        topic_id=1,
        batch_size=batch,
        commit_share=share,
        next_offset=kw.pop("next_offset", 1),
        floor=kw.pop("floor", 0),
        known_last=last,
        **kw,
    )


def send(w: SubscriptionWindow) -> list[int]:
    limit = w.read_limit()
    offsets = list(range(w.next_offset, min(w.next_offset + limit, w.known_last + 1)))
    if limit:
        w.delivered(offsets, w.known_last)
    return offsets


def test_the_next_batch_goes_once_the_share_of_the_previous_is_committed() -> None:
    w = window()
    assert send(w) == list(range(1, 11))
    assert w.read_limit() == 0
    w.committed(4)
    assert w.read_limit() == 0
    w.committed(5)
    assert send(w) == list(range(11, 16))  # 5 still outstanding: at most 10 in the window
    w.committed(13)
    assert send(w) == list(range(16, 24))


def test_a_range_window_finishes_at_its_end() -> None:
    w = window(end=12, next_offset=8, floor=7)
    assert send(w) == [8, 9, 10, 11, 12]
    assert w.finished
    assert w.read_limit() == 0


def test_a_range_whose_messages_are_gone_finishes_empty() -> None:
    w = window(end=5, next_offset=2, floor=1)
    w.delivered([], 50)
    assert w.finished


def test_a_commit_past_what_was_sent_skips_ahead_and_can_end_a_range() -> None:
    w = window(batch=5)
    assert send(w) == [1, 2, 3, 4, 5]
    w.committed(40)
    assert (w.next_offset, w.outstanding) == (41, 0)
    assert send(w) == [41, 42, 43, 44, 45]
    ranged = window(batch=5, end=8)
    assert send(ranged) == [1, 2, 3, 4, 5]
    ranged.committed(8)
    assert ranged.read_limit() == 1
    ranged.delivered([], 100)
    assert ranged.finished


def test_messages_removed_by_retention_do_not_count_as_outstanding() -> None:
    w = window(batch=10)
    w.delivered(list(range(50, 60)), 100)
    assert w.outstanding == 10
    w.committed(53)
    assert w.read_limit() == 0  # 4 of 10 committed: below the share
    w.committed(54)
    assert w.read_limit() == 5


def test_an_empty_read_skips_to_the_topic_end_without_spinning() -> None:
    w = window(last=10, next_offset=4, floor=3)
    w.delivered([], 10)
    assert w.next_offset == 11
    assert w.read_limit() == 0


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(1, 20),
    share=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    steps=st.lists(st.tuples(st.sampled_from(["publish", "commit", "pump"]), st.integers(0, 30))),
)
def test_a_window_never_holds_more_than_one_batch_uncommitted(
    batch: int, share: float, steps: list[tuple[str, int]]
) -> None:
    w = window(batch=batch, share=share, last=0)
    for action, amount in steps:
        if action == "publish":
            w.heard(w.known_last + amount)
        elif action == "commit":
            w.committed(min(w.sent_upto, w.floor + amount))
        else:
            sent = send(w)
            assert sent == list(range(sent[0], sent[-1] + 1)) if sent else True
        assert w.outstanding <= batch
        assert w.sent_upto <= w.known_last
    # A consumer that commits everything it gets eventually receives everything.
    for _ in range(w.known_last + 2):
        send(w)
        w.committed(w.sent_upto)
    assert w.sent_upto == w.known_last
