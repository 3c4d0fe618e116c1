# mypy: disable-error-code="union-attr"
# (tests read the fields of the effects they expect; a wrong effect fails the test anyway)
"""The pure session state machine (replication/protocol/machine.py): no database, no I/O."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataGateError, ErrorCode
from replication.protocol import machine as mc
from replication.protocol import messages as m
from replication.protocol.markers import Markers

ALL_TYPES = sorted(m.MESSAGE_TYPES)
EPOCH = 77


def new_session(**limits: Any) -> mc.Session:
    counter = itertools.count(1)
    return mc.Session(
        tenant="acme",
        collection="notes",
        server_id="server-1",
        limits=mc.Limits(**limits),
        new_id=lambda: f"s{next(counter)}",
        clock_ms=lambda: 1_000,
    )


def client(message_type: str, correlation: str | None = None, **body: Any) -> m.Body:
    header = {
        "id": f"c-{message_type}",
        "messageType": message_type,
        "transactionId": "tx",
        "correlationId": correlation,
        "tenant": "acme",
        "collection": "notes",
        "origin": "replica-1",
    }
    defaults: dict[str, Any] = {
        m.CONNECT: {"authToken": "t", "capabilities": ["live", "ranges"]},
        m.RANGE_CHECK: {"ranges": [{"lo": 0, "hi": 4096, "count": 0, "hash": "0" * 16}]},
        m.RANGE_RESULT: {"markers": {}},
        m.RANGE_FETCH: {"ids": ["a"]},
        m.CONNECT_ACK: {"tombstoneTtl": 1, "batchSize": 1, "endMarkers": {}},
        m.ERROR: {"error": "x"},
        m.TOKEN_REFRESH: {"authToken": "fresh"},
        m.TOKEN_REFRESH_ACK: {"expires": 1},
    }
    return m.parse_decoded({"header": header, **defaults.get(message_type, {}), **body})


def connected(**limits: Any) -> mc.Session:
    session = new_session(**limits)
    assert isinstance(session.receive(client(m.CONNECT))[0], mc.Authenticate)
    session.connect_accepted(user_name="wendy", read_only=False, end_markers=Markers(0, EPOCH))
    return session


def pulling(last_seq: int = 0, **limits: Any) -> mc.Session:
    session = connected(**limits)
    effects = session.receive(client(m.BATCH_END, batchSize=100))
    assert isinstance(effects[1], mc.ReadPosition)
    return session


def live(head: int = 0, **limits: Any) -> mc.Session:
    session = pulling(**limits)
    effects = session.position_done(last_seq=head, purge_seq=0, epoch=EPOCH)
    while effects and isinstance(effects[-1], mc.ReadChunk):
        read = effects[-1]
        effects = session.chunk_done(feed={}, covered=read.up_to_seq, count=read.up_to_seq)
    end = next(e for e in effects if isinstance(e, mc.Send))
    for chunk_id in list(session.pull.in_flight if session.pull else []):
        session.receive(client(m.BATCH_ACK, chunk_id))
    effects = session.receive(client(m.BATCH_END_ACK, end.message["header"]["id"]))
    assert effects[-1] == mc.GoLive(head)
    return session


def closed() -> mc.Session:
    session = connected()
    session.receive(client(m.DISCONNECT))
    return session


STATES = {
    mc.State.OPEN: new_session,
    mc.State.CONNECTED: connected,
    mc.State.PULLING: pulling,
    mc.State.LIVE: live,
    mc.State.CLOSED: closed,
}


@pytest.mark.parametrize("state", list(STATES), ids=lambda s: s.value)
@pytest.mark.parametrize("message_type", ALL_TYPES)
def test_every_state_and_message_is_a_transition_or_a_wrong_state_error(
    state: mc.State, message_type: str
) -> None:
    session = STATES[state]()
    assert session.state is state
    effects = session.receive(client(message_type))
    if state is mc.State.CLOSED:
        assert effects == []
    elif (state, message_type) in mc.TRANSITIONS:
        assert not any(
            isinstance(e, mc.ReportError) and e.error.error is ErrorCode.WRONG_STATE
            for e in effects
            if message_type not in (m.BATCH_ACK, m.BATCH_END_ACK)
        )
    else:
        error, close = effects
        assert isinstance(error, mc.ReportError)
        assert isinstance(close, mc.Close)
        assert error.error.error is ErrorCode.WRONG_STATE
        assert f"{message_type} is not allowed in state {state.value}" in error.error.text
        assert error.error.fatal
        assert close.code == 4409
        assert session.state is mc.State.CLOSED


def test_the_whole_session_in_order() -> None:
    session = new_session(chunk_size=2, chunks_in_flight=1)
    (authenticate,) = session.receive(client(m.CONNECT))
    assert isinstance(authenticate, mc.Authenticate)
    (ack,) = session.connect_accepted(
        user_name="wendy", read_only=False, end_markers=Markers(3, EPOCH)
    )
    assert isinstance(ack, mc.Send)
    assert ack.message["header"]["messageType"] == m.CONNECT_ACK
    assert ack.message["header"]["correlationId"] == "c-no2.sync.connect"
    assert ack.message["header"]["transactionId"] == "tx"
    assert ack.message["endMarkers"] == {"collectionMarker": 3, "tombstoneMarker": EPOCH}

    (apply,) = session.receive(client(m.BATCH_START, feed={"changeSet": []}, nextOffset=0))
    assert isinstance(apply, mc.ApplyChunk)
    assert apply.reply["header"]["messageType"] == m.BATCH_ACK
    assert apply.reply["header"]["correlationId"] == "c-no2.sync.batch.start"

    end_ack, read_position = session.receive(client(m.BATCH_END, batchSize=5))
    assert isinstance(end_ack, mc.Send)
    assert read_position == mc.ReadPosition()
    (read,) = session.position_done(last_seq=3, purge_seq=0, epoch=EPOCH)
    assert read == mc.ReadChunk(0, 3, 2)
    (chunk,) = session.chunk_done(feed={"changeSet": [1, 2]}, covered=2, count=2)
    assert isinstance(chunk, mc.Send)
    assert chunk.message["header"]["messageType"] == m.BATCH_START
    assert "reset" not in chunk.message
    # One chunk in flight: the next read waits for the ack.
    record, read = session.receive(client(m.BATCH_ACK, chunk.message["header"]["id"]))
    assert record == mc.RecordAck(2, 2)
    assert read == mc.ReadChunk(2, 3, 2)
    (chunk,) = session.chunk_done(feed={"changeSet": [3]}, covered=3, count=1)
    assert chunk.message["header"]["messageType"] == m.BATCH_CONTINUE
    record, batch_end = session.receive(client(m.BATCH_ACK, chunk.message["header"]["id"]))
    assert record == mc.RecordAck(3, 1)
    assert batch_end.message["header"]["messageType"] == m.BATCH_END
    assert batch_end.message["endMarkers"]["collectionMarker"] == 3
    record, go_live = session.receive(client(m.BATCH_END_ACK))
    assert record == mc.RecordAck(3)
    assert go_live == mc.GoLive(3)
    assert session.state is mc.State.LIVE

    (apply,) = session.receive(client(m.FEED, feed={"changeSet": []}))
    assert apply.reply["header"]["messageType"] == m.FEED_ACK
    (send,) = session.offer_feed(start=3, end=5, shareable=True, now=0)
    assert isinstance(send, mc.SendShared)
    record, *_ = session.receive(client(m.FEED_ACK, send.header["id"]))
    assert record == mc.RecordAck(5)
    assert session.receive(client(m.DISCONNECT)) == [mc.Close(1000)]


def test_nothing_to_pull_goes_straight_to_batch_end() -> None:
    session = pulling()
    (end,) = session.position_done(last_seq=0, purge_seq=0, epoch=EPOCH)
    assert end.message["header"]["messageType"] == m.BATCH_END


OLD_EPOCH = 55  # the epoch of an older definition of the session's view (rule 9)


@pytest.mark.parametrize("head", [4, 9])
def test_a_view_replica_of_an_older_definition_gets_the_difference_then_its_changes(
    head: int,
) -> None:
    session = connected()
    start = {"collectionMarker": 4, "tombstoneMarker": OLD_EPOCH}
    session.receive(client(m.BATCH_END, startMarkers=start))
    (read,) = session.position_done(last_seq=head, purge_seq=0, epoch=EPOCH, resync_epoch=OLD_EPOCH)
    assert read == mc.ReadDifference("", 4, 500)
    (chunk, read) = session.difference_done(feed={"d": 1}, count=2, last_id="b", more=True)
    body = chunk.message
    assert "reset" not in body
    assert body["feed"] == {"d": 1}
    assert body["nextOffset"] == 2
    assert body["startMarkers"] == {"collectionMarker": 4, "tombstoneMarker": EPOCH}
    assert body["endMarkers"] == {"collectionMarker": head, "tombstoneMarker": EPOCH}
    assert read == mc.ReadDifference("b", 4, 500)
    effects = session.difference_done(feed={}, count=0, last_id="b", more=False)
    if head > 4:  # then the changes after the marker, through the new definition
        assert effects == [mc.ReadChunk(4, 9, 500)]
        return
    assert effects == []  # nothing changed since the marker: batch.end once the chunk is acked
    (record, end) = session.receive(client(m.BATCH_ACK, body["header"]["id"]))
    assert record == mc.RecordAck(4, 2)
    assert end.message["header"]["messageType"] == m.BATCH_END
    assert end.message["endMarkers"] == {"collectionMarker": 4, "tombstoneMarker": EPOCH}


def test_an_epoch_the_shell_cannot_name_still_gets_the_reset_snapshot() -> None:
    session = connected()
    start = {"collectionMarker": 4, "tombstoneMarker": OLD_EPOCH}
    session.receive(client(m.BATCH_END, startMarkers=start))
    (read,) = session.position_done(last_seq=5, purge_seq=0, epoch=EPOCH, resync_epoch=None)
    assert read == mc.ReadChunk(0, 5, 500)


@pytest.mark.parametrize(
    ("markers", "reset"),
    [
        ({"collectionMarker": 0, "tombstoneMarker": 0}, False),
        ({"collectionMarker": 4, "tombstoneMarker": EPOCH}, False),
        ({"collectionMarker": 9, "tombstoneMarker": EPOCH}, True),  # ahead of the server
        ({"collectionMarker": 4, "tombstoneMarker": EPOCH + 1}, True),  # another epoch
        ({"collectionMarker": 1, "tombstoneMarker": EPOCH}, True),  # behind the purge horizon
    ],
)
def test_the_first_pull_chunk_says_reset_when_the_markers_cannot_be_resumed(
    markers: dict[str, int], reset: bool
) -> None:
    session = connected()
    session.receive(client(m.BATCH_END, startMarkers=markers))
    (read,) = session.position_done(last_seq=5, purge_seq=2, epoch=EPOCH)
    assert read.after_seq == (0 if reset else markers["collectionMarker"])
    (chunk, *_) = session.chunk_done(feed={}, covered=5, count=1)
    assert chunk.message.get("reset", False) is reset


@pytest.mark.parametrize("field", ["tenant", "collection", "transactionId", "origin", "userName"])
def test_a_header_naming_another_session_is_fatal(field: str) -> None:
    session = connected()
    message = client(m.BATCH_END)
    header = message.header.model_copy(update={field: "someone-else"})
    error, close = session.receive(message.model_copy(update={"header": header}))
    assert error.error.error is ErrorCode.HEADER_MISMATCH
    assert field in error.error.text
    assert close == mc.Close(4409)


def test_bad_frames_are_fatal_only_before_connect_ack() -> None:
    bad = DataGateError(ErrorCode.NOT_JSON, detail="x")
    assert new_session().frame_rejected(bad) == [mc.ReportError(bad), mc.Close(4400)]
    bad = DataGateError(ErrorCode.NOT_JSON, detail="x")
    assert connected().frame_rejected(bad) == [mc.ReportError(bad)]
    assert not bad.fatal


def test_a_malformed_frame_before_connect_ack_is_a_protocol_violation() -> None:
    for code in (ErrorCode.MISSING_HEADER, ErrorCode.UNKNOWN_MESSAGE_TYPE):
        bad = DataGateError(code, message_type="x")
        assert new_session().frame_rejected(bad) == [mc.ReportError(bad), mc.Close(4409)]


def test_connect_without_an_origin_is_invalid() -> None:
    message = client(m.CONNECT)
    header = message.header.model_copy(update={"origin": None})
    error, close = new_session().receive(message.model_copy(update={"header": header}))
    assert error.error.error is ErrorCode.INVALID_MESSAGE
    assert close == mc.Close(4409)


def test_messages_while_authenticating_are_wrong_state() -> None:
    session = new_session()
    session.receive(client(m.CONNECT))
    error, _ = session.receive(client(m.BATCH_END))
    assert error.error.error is ErrorCode.WRONG_STATE


def test_a_replica_that_stops_acking_is_closed_after_the_timeout() -> None:
    session = live(feed_ack_timeout=10)
    session.offer_feed(start=0, end=1, shareable=True, now=100.0)
    assert session.tick(now=109.0) == []
    error, close = session.tick(now=110.5)
    assert error.error.error is ErrorCode.FEED_ACK_TIMEOUT
    assert close == mc.Close(4429)


def test_an_ack_restarts_the_timeout() -> None:
    session = live(feed_ack_timeout=10)
    first = session.offer_feed(start=0, end=1, shareable=True, now=100.0)[0]
    session.offer_feed(start=1, end=2, shareable=True, now=101.0)
    session.receive(client(m.FEED_ACK, first.header["id"]), now=108.0)
    assert session.tick(now=115.0) == []
    assert session.tick(now=118.5) != []


def test_shutdown_sends_disconnect_then_closes_1001() -> None:
    send, close = live().shutdown()
    assert send.message["header"]["messageType"] == m.DISCONNECT
    assert close == mc.Close(1001)


def test_a_client_without_live_is_disconnected_after_the_pull() -> None:
    session = new_session()
    session.receive(client(m.CONNECT, capabilities=[]))
    session.connect_accepted(user_name="w", read_only=True, end_markers=Markers(0, EPOCH))
    session.receive(client(m.BATCH_END))
    (end,) = session.position_done(last_seq=0, purge_seq=0, epoch=EPOCH)
    _record, disconnect, close = session.receive(
        client(m.BATCH_END_ACK, end.message["header"]["id"])
    )
    assert disconnect.message["header"]["messageType"] == m.DISCONNECT
    assert close == mc.Close(1000)


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(0, 40),
    chunk_size=st.integers(1, 7),
    in_flight=st.integers(1, 4),
    ack_order=st.randoms(use_true_random=False),
)
def test_a_pull_covers_everything_once_with_a_bounded_number_of_chunks_in_flight(
    total: int, chunk_size: int, in_flight: int, ack_order: Any
) -> None:
    session = new_session(chunk_size=chunk_size, chunks_in_flight=in_flight)
    session.receive(client(m.CONNECT))
    session.connect_accepted(user_name="w", read_only=False, end_markers=Markers(total, EPOCH))
    session.receive(client(m.BATCH_END))
    pending = session.position_done(last_seq=total, purge_seq=0, epoch=EPOCH)
    unacked: list[str] = []
    covered_ranges: list[tuple[int, int]] = []
    ended = False
    while pending or unacked:
        while pending:
            effect = pending.pop(0)
            if isinstance(effect, mc.ReadChunk):
                covered = min(effect.after_seq + effect.limit, effect.up_to_seq)
                covered_ranges.append((effect.after_seq, covered))
                pending += session.chunk_done(
                    feed={}, covered=covered, count=covered - effect.after_seq
                )
            elif isinstance(effect, mc.Send):
                message_type = effect.message["header"]["messageType"]
                if message_type == m.BATCH_END:
                    assert not unacked
                    ended = True
                else:
                    unacked.append(effect.message["header"]["id"])
            assert len(unacked) <= in_flight
        if unacked:
            chunk_id = unacked.pop(ack_order.randrange(len(unacked)))
            pending += session.receive(client(m.BATCH_ACK, chunk_id))
    assert ended
    starts = [0] + [end for _, end in covered_ranges[:-1]]
    assert [start for start, _ in covered_ranges] == starts[: len(covered_ranges)]
    assert (covered_ranges[-1][1] if covered_ranges else 0) == total


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("commit"), st.integers(1, 5), st.booleans()),
            st.tuples(st.just("ack"), st.integers(0, 3), st.booleans()),
        ),
        max_size=60,
    ),
    window=st.integers(1, 4),
    chunk_size=st.integers(1, 6),
)
def test_live_feeds_are_contiguous_and_bounded_by_the_window(
    steps: list[tuple[str, int, bool]], window: int, chunk_size: int
) -> None:
    session = live(feed_window=window, chunk_size=chunk_size)
    head = 0
    sent: list[tuple[int, int, str]] = []  # (start, end, id) in send order
    acked = 0
    reads: list[mc.ReadFeed] = []

    def run(effects: list[mc.Effect], block: tuple[int, int] | None = None) -> None:
        for effect in effects:
            if isinstance(effect, mc.SendShared):
                assert block is not None
                sent.append((block[0], block[1], effect.header["id"]))
            elif isinstance(effect, mc.Send):
                message = effect.message
                sent.append(
                    (
                        message["startMarkers"]["collectionMarker"],
                        message["endMarkers"]["collectionMarker"],
                        message["header"]["id"],
                    )
                )
            elif isinstance(effect, mc.ReadFeed):
                reads.append(effect)
        assert len(sent) - acked <= window

    for kind, size, flag in steps:
        if kind == "commit":
            start, head = head, head + size
            run(session.offer_feed(start=start, end=head, shareable=flag, now=0), (start, head))
        elif sent[acked:]:
            acked = min(len(sent), acked + 1 + size)
            run(session.receive(client(m.FEED_ACK, sent[acked - 1][2])))
        if reads and flag:
            read = reads.pop(0)
            covered = min(read.after_seq + read.limit, read.up_to_seq)
            run(session.feed_done(feed={}, covered=covered, count=covered - read.after_seq, now=0))
    # Drain: ack everything and perform every read; the replica then has everything.
    for _ in range(1000):
        if reads:
            read = reads.pop(0)
            covered = min(read.after_seq + read.limit, read.up_to_seq)
            run(session.feed_done(feed={}, covered=covered, count=covered - read.after_seq, now=0))
        elif sent[acked:]:
            acked = len(sent)
            run(session.receive(client(m.FEED_ACK, sent[-1][2])))
        else:
            break
    position = 0
    for start, end, _ in sent:
        assert start == position, f"gap or overlap: feed ({start}, {end}] after {position}"
        assert end > start
        position = end
    assert position == head
    assert session.acked_seq == head


# --- data views (rule 9) --------------------------------------------------------------------


def _ack_capabilities(effects: list[mc.Effect]) -> list[str]:
    send = effects[0]
    assert isinstance(send, mc.Send)
    return list(send.message["capabilities"])


def test_a_connect_naming_a_view_gets_views_back_and_no_ranges() -> None:
    session = new_session()
    connect = client(m.CONNECT, capabilities=["live", "ranges", "views"], view="open-tasks")
    assert isinstance(session.receive(connect)[0], mc.Authenticate)
    assert session.view == "open-tasks"
    effects = session.connect_accepted(
        user_name="rita", read_only=False, end_markers=Markers(0, EPOCH)
    )
    assert _ack_capabilities(effects) == ["live", "views"]
    assert not session.ranges


def test_a_connect_without_a_view_is_unchanged() -> None:
    session = new_session()
    session.receive(client(m.CONNECT, capabilities=["live", "ranges", "views"]))
    effects = session.connect_accepted(
        user_name="rita", read_only=False, end_markers=Markers(0, EPOCH)
    )
    assert _ack_capabilities(effects) == ["live", "ranges"]


@pytest.mark.parametrize("view", ["", 7, "x" * 65])
def test_a_bad_view_name_is_an_invalid_connect(view: Any) -> None:
    with pytest.raises(DataGateError) as caught:
        client(m.CONNECT, view=view)
    assert caught.value.code == "DG-2004"
