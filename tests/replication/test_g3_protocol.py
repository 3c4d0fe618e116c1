# mypy: disable-error-code="union-attr"
"""G3 sessions in the pure machine (machine.py rule 7, replication/protocol/g3.py): no I/O."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataGateError, ErrorCode
from replication.protocol import g3
from replication.protocol import machine as mc
from replication.protocol import messages as m
from replication.protocol.markers import Markers
from tests.support.g3_client import G3_KEYS, parse

EPOCH = 77
HEADER = set(g3.HEADER_KEYS)


def new_session() -> mc.Session:
    counter = itertools.count(1)
    return mc.Session(
        tenant="acme",
        collection="todos",
        server_id="server-1",
        limits=mc.Limits(chunk_size=500, tombstone_ttl_days=30),
        new_id=lambda: f"s{next(counter)}",
        clock_ms=lambda: 1_700_000_000_000,
    )


def client(message_type: str, correlation: str | None = None, **body: Any) -> m.Body:
    """A frame as the G3 client writes it: every header key, nulls included, no capabilities."""
    header = {
        "id": f"c-{message_type}",
        "transactionId": "tx1",
        "correlationId": correlation,
        "tenant": "acme",
        "collection": "todos",
        "userName": "wendy",
        "timestamp": 1_700_000_000_000,
        "messageType": message_type,
        "origin": "r1[5f0e]",
    }
    batch = {"nextOffset": None, "batchSize": None, "startMarkers": None, "endMarkers": None}
    defaults: dict[str, dict[str, Any]] = {
        m.CONNECT: {"authToken": "t"},
        m.RANGE_CHECK: {"ranges": [{"lo": 0, "hi": 4096, "count": 0, "hash": "0" * 16}]},
        m.RANGE_RESULT: {"markers": {}},
        m.RANGE_FETCH: {"ids": ["a"]},
        m.BATCH_START: {**batch, "feed": {"changeSet": [], "tombstoneMap": {}}},
        m.BATCH_CONTINUE: {**batch, "feed": {"changeSet": [], "tombstoneMap": {}}},
        m.BATCH_END: batch,
        m.BATCH_ACK: {**batch, "receipt": {"added": [], "removed": []}},
        m.BATCH_END_ACK: batch,
        m.CONNECT_ACK: {"tombstoneTtl": 1, "batchSize": 1, "endMarkers": {}},
        m.ERROR: {"error": "x"},
        m.TOKEN_REFRESH: {"authToken": "fresh"},
        m.TOKEN_REFRESH_ACK: {"expires": 1},
    }
    return m.parse_decoded({"header": header, **defaults.get(message_type, {}), **body})


def sent(effects: list[mc.Effect]) -> list[dict[str, Any]]:
    """Every frame the effects send, checked as the strict G3 client reads it."""
    frames = [e.message for e in effects if isinstance(e, mc.Send)]
    for frame in frames:
        assert set(frame["header"]) == HEADER
        message_type, _, _ = parse(m.encode(frame), exact=True)
        assert set(frame) - {"header"} == G3_KEYS[message_type]
    return frames


def connected() -> mc.Session:
    session = new_session()
    (auth,) = session.receive(client(m.CONNECT))
    assert isinstance(auth, mc.Authenticate)
    assert session.g3
    sent(
        session.connect_accepted(user_name="wendy", read_only=False, end_markers=Markers(5, EPOCH))
    )
    return session


def pulling() -> mc.Session:
    session = connected()
    effects = session.receive(client(m.BATCH_END, batchSize=10))
    assert isinstance(effects[-1], mc.ReadPosition)
    return session


def closed() -> mc.Session:
    session = connected()
    session.receive(client(m.DISCONNECT))
    return session


STATES = {
    mc.State.OPEN: new_session,
    mc.State.CONNECTED: connected,
    mc.State.PULLING: pulling,
    mc.State.CLOSED: closed,
}


def test_the_g3_table_is_the_full_one_without_live_token_refresh_and_ranges() -> None:
    assert set(mc.G3_TRANSITIONS) == {
        key
        for key in mc.TRANSITIONS
        if key[0] is not mc.State.LIVE
        and key[1] != m.TOKEN_REFRESH
        and key[1] not in m.RANGE_MESSAGES
    }


@pytest.mark.parametrize("state", list(STATES), ids=lambda s: s.value)
@pytest.mark.parametrize("message_type", sorted(m.MESSAGE_TYPES))
def test_every_g3_state_and_message_is_a_transition_or_a_g3_shaped_wrong_state_error(
    state: mc.State, message_type: str
) -> None:
    session = STATES[state]()
    effects = session.receive(client(message_type))
    if state is mc.State.CLOSED:
        assert effects == []
        return
    if (state, message_type) in mc.G3_TRANSITIONS:
        assert not any(
            isinstance(e, mc.ReportError) and e.error.error is ErrorCode.WRONG_STATE
            for e in effects
            if message_type not in (m.BATCH_ACK, m.BATCH_END_ACK)
        )
        sent(effects)
        return
    error, close = effects
    assert isinstance(error, mc.ReportError)
    assert close == mc.Close(4409)
    frame = session.error_message(error.error)
    # Before a Connect the mode is not known yet: the full contract's error.
    assert set(frame) == (
        {"header", "error", "code", "fatal"} if state is mc.State.OPEN else {"header", "error"}
    )
    assert frame["error"].startswith("DG-2006 ")
    assert len(frame["error"]) <= 123


def test_the_mode_is_what_the_connect_says() -> None:
    own = new_session()
    own.receive(client(m.CONNECT, capabilities=[]))
    (ack,) = own.connect_accepted(user_name="w", read_only=True, end_markers=Markers(5, EPOCH))
    assert not own.g3
    assert {"capabilities", "readOnly"} <= set(ack.message)
    nitrite = connected()
    assert nitrite.transitions is mc.G3_TRANSITIONS


def test_a_g3_connect_ack_has_integer_offsets_and_the_ttl_in_days() -> None:
    session = new_session()
    session.receive(client(m.CONNECT))
    (ack,) = sent(
        session.connect_accepted(user_name="wendy", read_only=True, end_markers=Markers(5, 7))
    )
    assert ack["nextOffset"] == 0
    assert ack["batchSize"] == 0
    assert ack["tombstoneTtl"] == 30
    assert ack["header"]["transactionId"] == "tx1"
    assert ack["header"]["correlationId"] == "c-no2.sync.connect"


def test_a_g3_error_is_the_header_and_the_text() -> None:
    session = new_session()
    session.receive(client(m.CONNECT))
    error = DataGateError(ErrorCode.TOKEN_INVALID, reason="unknown or revoked token")
    effects = session.connect_refused(error)
    assert effects[1] == mc.Close(4401)
    frame = session.error_message(error)
    assert frame == {"header": frame["header"], "error": error.text}
    assert frame["error"].startswith("DG-1001 failed to validate token")


DOC_ID = "1633299999999000001"
DOC: dict[str, Any] = {"_id": DOC_ID, "_revision": 2, "_modified": 1633299990000, "title": "m"}


def test_a_push_chunk_acks_every_id_and_drops_the_origin_the_client_carried() -> None:
    session = connected()
    carried = {**DOC, "_origin": "somebody-else"}
    (apply,) = session.receive(
        client(
            m.BATCH_START,
            nextOffset=10,
            batchSize=10,
            feed={"changeSet": [carried, {"_id": 5}], "tombstoneMap": {"17": 1633299995000}},
        )
    )
    assert isinstance(apply, mc.ApplyChunk)
    assert apply.receipt_in_reply
    assert apply.feed["changeSet"][0] == DOC
    (reply,) = sent([mc.Send(apply.reply)])
    assert reply["receipt"] == {"added": [DOC["_id"]], "removed": ["17"]}
    assert reply["nextOffset"] == 10
    assert reply["header"]["correlationId"] == "c-no2.sync.batch.start"


def test_a_retry_chunk_with_a_null_offset_is_acked_with_the_last_offset() -> None:
    session = connected()
    (first,) = session.receive(client(m.BATCH_CONTINUE, nextOffset=None, batchSize=10))
    assert first.reply["nextOffset"] == 0
    session.receive(client(m.BATCH_START, nextOffset=10, batchSize=10))
    (retry,) = session.receive(client(m.BATCH_CONTINUE, nextOffset=None, batchSize=10))
    assert retry.reply["nextOffset"] == 10


def test_the_pull_is_g3_shaped_and_ends_with_non_null_markers() -> None:
    session = pulling()
    read = session.position_done(last_seq=3, purge_seq=0, epoch=EPOCH)[-1]
    assert isinstance(read, mc.ReadChunk)
    assert read.limit == 10
    feed = {"changeSet": [{**DOC, "_origin": "x"}], "tombstoneMap": {"9": 1633299995000}}
    (chunk,) = sent(session.chunk_done(feed=feed, covered=3, count=2))
    assert chunk["feed"]["changeSet"] == [DOC]
    assert chunk["nextOffset"] == 2
    assert chunk["endMarkers"] == Markers(3, EPOCH).to_wire()
    effects = session.receive(client(m.BATCH_ACK, chunk["header"]["id"]))
    (end,) = sent(effects)
    assert end["header"]["messageType"] == m.BATCH_END
    assert end["nextOffset"] == 2
    assert end["endMarkers"] == {
        "collectionMarker": 3,
        "tombstoneMarker": EPOCH,
    }
    effects = session.receive(client(m.BATCH_END_ACK, end["header"]["id"]))
    (disconnect,) = sent(effects)
    assert set(disconnect) == {"header"}
    assert effects[-1] == mc.Close(1000)


def test_a_reset_pull_is_a_snapshot_without_the_reset_key() -> None:
    session = connected()
    session.receive(
        client(
            m.BATCH_END, batchSize=10, startMarkers={"collectionMarker": 9, "tombstoneMarker": 1}
        )
    )
    session.position_done(last_seq=3, purge_seq=0, epoch=EPOCH)
    (chunk,) = sent(
        session.chunk_done(feed={"changeSet": [], "tombstoneMap": {}}, covered=3, count=0)
    )
    assert "reset" not in chunk


def test_refused_changes_are_read_back_and_sent_before_the_batch_end() -> None:
    session = connected()
    feed = {"changeSet": [DOC, {**DOC, "_id": "2"}], "tombstoneMap": {"3": 1633299995000}}
    (apply,) = session.receive(client(m.BATCH_START, nextOffset=10, batchSize=10, feed=feed))
    assert session.push_applied(feed=apply.feed, refused_ids={DOC["_id"], "2", "3"}) == []
    end_markers = {"collectionMarker": 1633299990000, "tombstoneMarker": 1633299996000}
    session.receive(client(m.BATCH_END, batchSize=10, endMarkers=end_markers))
    assert isinstance(session.position_done(last_seq=5, purge_seq=0, epoch=EPOCH)[0], mc.ReadChunk)
    effects = session.chunk_done(feed={"changeSet": [], "tombstoneMap": {}}, covered=5, count=0)
    assert effects == [mc.ReadVersions((DOC_ID, "2", "3"))]
    held = {DOC_ID: g3.Held({"title": "server"}, 1, 1633290000000), "2": None, "3": None}
    (chunk,) = sent(session.versions_done(held=held))
    assert chunk["header"]["messageType"] == m.BATCH_START
    assert [(d["_id"], d["_revision"], d["title"]) for d in chunk["feed"]["changeSet"]] == [
        (DOC["_id"], 3, "server")
    ]
    assert chunk["feed"]["tombstoneMap"] == {"2": DOC["_modified"]}
    effects = session.receive(client(m.BATCH_ACK, chunk["header"]["id"]))
    assert effects[0] == mc.RecordAck(5, 0)
    (end,) = sent(effects[1:])
    assert end["header"]["messageType"] == m.BATCH_END
    assert end["nextOffset"] == 2
    assert session.refused == {}


def test_corrections_bring_the_replica_to_the_servers_version() -> None:
    held = g3.Held({"v": "server"}, 3, 1633299000000)
    cases = [
        # refused write, server holds a document of a lower revision: replica's rev + 1
        (g3.Pushed(False, 4, 1633299990000), held, [("x", 5, 1633299990000)], {}),
        # refused write, server's revision already wins at the replica: verbatim
        (g3.Pushed(False, 2, 1633299990000), held, [("x", 3, 1633299000000)], {}),
        # the replica pushed back the server's own version: nothing to correct
        (g3.Pushed(False, 3, 1633299000000), held, [], {}),
        # refused write of something the server does not hold (or hides): a removal
        (g3.Pushed(False, 1, 1633299990000), None, [], {"x": 1633299990000}),
        # refused delete, the server holds the document: it comes back over the tombstone
        (g3.Pushed(True, None, 1633299990000), held, [("x", 3, 1633299996000)], {}),
        # refused delete of something the server does not hold: the replica agrees already
        (g3.Pushed(True, None, 1633299990000), None, [], {}),
    ]
    for pushed, server, docs, tombs in cases:
        feed = g3.corrections(
            refused={"x": pushed},
            held={"x": server},
            client_end=(1633299990000, 1633299996000),
            now_ms=1633300000000,
        )
        got = [(d["_id"], d["_revision"], d["_modified"]) for d in feed["changeSet"]]
        assert (got, feed["tombstoneMap"]) == (docs, tombs), pushed
        assert all(d["v"] == "server" for d in feed["changeSet"])


keys = st.text(min_size=1, max_size=12)
values = st.none() | st.integers() | st.text(max_size=8) | st.booleans()


@settings(max_examples=200, deadline=None)
@given(
    message_type=st.sampled_from(sorted(g3.BODY_KEYS)),
    extra=st.dictionaries(keys, values, max_size=5),
    header_extra=st.dictionaries(keys, values, max_size=3),
    doc_extra=st.dictionaries(keys, values, max_size=3),
)
def test_shape_leaves_exactly_the_g3_keys_whatever_the_message_had(
    message_type: str,
    extra: dict[str, Any],
    header_extra: dict[str, Any],
    doc_extra: dict[str, Any],
) -> None:
    header = {**header_extra, "id": "s1", "collection": "todos", "messageType": message_type}
    message = {
        **extra,
        "header": header,
        "feed": {"changeSet": [{**doc_extra, **DOC, "_origin": "o"}], "tombstoneMap": {}, "x": 1},
        "receipt": {"added": ["a"], "removed": [], "rejected": [{"id": "b"}]},
        "startMarkers": {"collectionMarker": 1, "tombstoneMarker": 2, "more": 3},
    }
    shaped = g3.shape(message)
    assert set(shaped) - {"header"} == G3_KEYS[message_type]
    assert set(shaped["header"]) == HEADER
    if "feed" in shaped:
        assert set(shaped["feed"]) == {"changeSet", "tombstoneMap"}
        assert "_origin" not in shaped["feed"]["changeSet"][0]
    if "receipt" in shaped:
        assert shaped["receipt"] == {"added": ["a"], "removed": []}
    if shaped.get("startMarkers") is not None:
        assert shaped["startMarkers"] == {"collectionMarker": 1, "tombstoneMarker": 2}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    change_set=st.lists(json_values | st.fixed_dictionaries({"_id": json_values}), max_size=6),
    tombstones=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    next_offset=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
)
def test_any_pushed_chunk_gets_a_g3_ack_listing_every_string_id(
    change_set: list[Any], tombstones: dict[str, Any], next_offset: int | None
) -> None:
    session = connected()
    effects = session.receive(
        client(
            m.BATCH_CONTINUE,
            nextOffset=next_offset,
            batchSize=10,
            feed={"changeSet": change_set, "tombstoneMap": tombstones},
        )
    )
    (apply,) = effects
    (ack,) = sent([mc.Send(apply.reply)])
    assert isinstance(ack["nextOffset"], int)
    ids = [d["_id"] for d in change_set if isinstance(d, dict) and isinstance(d.get("_id"), str)]
    assert ack["receipt"] == {"added": list(dict.fromkeys(ids)), "removed": list(tombstones)}
    assert not any(isinstance(d, dict) and "_origin" in d for d in apply.feed["changeSet"])


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("ws/datagate/acme/todos/", {"tenant": "acme", "collection": "todos"}),
        ("ws/datagate/acme/todos", {"tenant": "acme", "collection": "todos"}),
        (
            "ws/datagate/acme/todos/a@b.c/",
            {"tenant": "acme", "collection": "todos", "user": "a@b.c"},
        ),
        (
            "ws/datagate/acme/todos/a@b.c",
            {"tenant": "acme", "collection": "todos", "user": "a@b.c"},
        ),
        ("ws/datagate/acme/todos/a/b", None),
        ("ws/datagate/acme", None),
    ],
)
def test_the_sync_urls_match_with_and_without_the_trailing_slash(
    path: str, kwargs: dict[str, str] | None
) -> None:
    from replication.routing import websocket_urlpatterns

    matches = [p.pattern.match(path) for p in websocket_urlpatterns]
    found = [match[2] for match in matches if match]
    assert found == ([kwargs] if kwargs else [])


def test_a_g3_receipt_names_an_id_no_frame_could_carry_escaped() -> None:
    from replication.protocol.g3 import receipt_of_feed
    from replication.protocol.messages import encode

    receipt = receipt_of_feed(
        {"changeSet": [{"_id": "a\ud800"}, {"_id": "b"}], "tombstoneMap": {"c\udc00": 1}}
    )
    assert receipt == {"added": ["a\\ud800", "b"], "removed": ["c\\udc00"]}
    assert encode({"receipt": receipt}).encode("utf-8")
