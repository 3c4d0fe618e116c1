"""The sync machine alone (datagate_replica/machine.py): events in, effects out, no I/O.

A `Driver` plays the shell with an in-memory journal: it performs the store effects and hands
the reads back. The scripted tests walk the rules; the hypothesis test throws any sequence of
events at the machine and checks that it never reaches an invalid state and never lets a
change leave the journal without the server's receipt or a refusal code.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from datagate_replica import machine as sm
from datagate_replica.clock import WRITE
from datagate_replica.machine import State
from datagate_replica.ranges import BUCKETS
from datagate_replica.store import Markers, PendingChange, RejectedChange, Settlement, Version
from hypothesis import given, settings
from hypothesis import strategies as st

FRESH = Markers(0, 1)
SERVER = Markers(5, 1)
LIMIT = 1024 * 1024


class Driver:
    """The shell, without a websocket or SQLite: a journal in a dict, effects recorded."""

    def __init__(self, *, live: bool = False, stored: Markers = FRESH, **config: Any) -> None:
        ids = (f"m{n}" for n in itertools.count())
        self.machine = sm.SyncMachine(
            sm.Config(token="t", live=live, **config),
            stored=stored,
            suspects=set(),
            frame_limit=LIMIT,
            max_document_bytes=LIMIT - 4096,
            new_id=lambda: next(ids),
        )
        self.journal: dict[str, int] = {}  # doc id -> change_no
        self.numbers = itertools.count(1)
        self.sent: list[sm.Send] = []
        self.frames: dict[str, dict[str, int]] = {}  # our frames: id -> {doc id: change_no}
        self.effects: list[sm.Effect] = []
        self.ends: list[sm.End] = []
        self.receipts: list[tuple[dict[str, int], dict[str, Any]]] = []  # what acks said
        self.lost: list[tuple[str, int]] = []  # left the journal without receipt or code
        self.suspects: frozenset[int] = frozenset()

    def put(self, doc_id: str) -> None:
        self.journal[doc_id] = next(self.numbers)

    def run(self, effects: list[sm.Effect]) -> None:
        queue = list(effects)
        while queue:
            effect = queue.pop(0)
            self.effects.append(effect)
            queue = self.perform(effect) + queue

    def perform(self, effect: sm.Effect) -> list[sm.Effect]:
        m = self.machine
        if isinstance(effect, sm.Send):
            self.sent.append(effect)
            if effect.message_type in (sm.BATCH_START, sm.BATCH_CONTINUE, sm.FEED):
                feed = effect.body["feed"]
                ids = [d["_id"] for d in feed["changeSet"]] + list(feed["tombstoneMap"])
                self.frames[effect.message_id] = {i: self.journal[i] for i in ids}
            return []
        if isinstance(effect, sm.ReadJournal):
            entries = sorted((n, d) for d, n in self.journal.items() if n > effect.after)
            pending = [
                PendingChange(n, Version(d, WRITE, n, 1, "me", {"n": n}))
                for n, d in entries[: effect.limit]
            ]
            return m.journal_read(pending)
        if isinstance(effect, sm.Settle):
            assert (effect.sent, effect.receipt) in self.receipts, "settled without a receipt"
            dropped = 0
            for doc_id in [*effect.receipt.get("added", []), *effect.receipt.get("removed", [])]:
                if doc_id in effect.sent and self.journal.get(doc_id) == effect.sent[doc_id]:
                    del self.journal[doc_id]
                    dropped += 1
            return m.settle_done(Settlement(dropped=dropped))
        if isinstance(effect, sm.RejectPending):
            assert effect.code, "a refusal always has a code"
            if self.journal.get(effect.doc_id) == effect.change_no:
                del self.journal[effect.doc_id]
                version = Version(effect.doc_id, WRITE, effect.change_no, 1, "me", {})
                rejected = RejectedChange(version, effect.code, effect.error, 0)
                return [] if effect.quiet else m.reject_done(rejected)
            return [] if effect.quiet else m.reject_done(None)
        if isinstance(effect, sm.ReadHeld):
            return m.held_read([])
        if isinstance(effect, sm.ResetComplete):
            return m.reset_done(0)
        if isinstance(effect, sm.StoreSuspects):
            self.suspects = effect.change_nos
        if isinstance(effect, sm.End):
            self.ends.append(effect)
        return []

    # -- the server's side -------------------------------------------------------------------

    def server(self, message_type: str, **body: Any) -> None:
        header = {"id": f"s{len(self.effects)}", "messageType": message_type}
        header["correlationId"] = body.pop("correlation_id", None)
        self.run(self.machine.receive({"header": header, **body}))

    def ack_oldest(self, *, keep: frozenset[str] = frozenset()) -> bool:
        """Acknowledge the oldest frame in flight; its ids in `keep` are left out."""
        kind = sm.FEED_ACK if self.machine.state == State.LIVE else sm.BATCH_ACK
        waiting = [f for f in self.machine.unacked if f in self.frames]
        if not waiting:
            return False
        frame = waiting[0]
        sent = self.frames[frame]
        receipt = {"added": [i for i in sent if i not in keep], "removed": [], "rejected": []}
        self.receipts.append((sent, receipt))
        self.server(kind, correlation_id=frame, receipt=receipt)
        return True

    def step(self, choice: int, keep: frozenset[str]) -> None:
        """Answer as a well-behaved server would in the current state."""
        state = self.machine.state
        if state == State.CONNECTING:
            self.server(sm.CONNECT_ACK, **connect_ack())
        elif state == State.PUSHING or (state == State.LIVE and choice == 0):
            self.ack_oldest(keep=keep)
        elif state == State.ENDING:
            self.server(sm.BATCH_END_ACK)
        elif state == State.PULLING and choice < 2:
            feed = {"changeSet": [{"_id": "p", "_revision": 1, "_modified": choice + 1}]}
            self.server(sm.BATCH_CONTINUE, feed=feed, reset=choice == 1)
        elif state == State.PULLING:
            self.server(sm.BATCH_END, endMarkers=SERVER.to_wire())
        elif state == State.LIVE:
            at = self.machine._stored.seq
            self.server(
                sm.FEED,
                startMarkers=Markers(at, 1).to_wire(),
                endMarkers=Markers(at + 1, 1).to_wire(),
                feed={"changeSet": [], "tombstoneMap": {"q": 5}},
            )
        elif state == State.FINISHING:
            self.server(sm.DISCONNECT)

    def pull_to_live(self) -> None:
        self.server(sm.BATCH_END_ACK)
        self.server(sm.BATCH_END, endMarkers=SERVER.to_wire(), startMarkers=FRESH.to_wire())


def connect_ack(**body: Any) -> dict[str, Any]:
    return {"endMarkers": Markers(5, 1).to_wire(), "capabilities": ["live", "ranges"], **body}


def kinds(driver: Driver) -> list[str]:
    return [s.message_type for s in driver.sent]


def test_an_empty_session_connects_ends_its_push_pulls_and_waits_for_goodbye() -> None:
    d = Driver()
    d.run(d.machine.start())
    assert kinds(d) == [sm.CONNECT]
    assert d.sent[0].body["capabilities"] == ["ranges"]
    d.server(sm.CONNECT_ACK, **connect_ack())
    assert kinds(d)[-1] == sm.BATCH_END
    assert d.machine.state == State.ENDING
    d.pull_to_live()
    assert d.machine.state == State.FINISHING
    assert any(isinstance(e, sm.StoreMarkers) and e.markers == Markers(5, 1) for e in d.effects)
    d.server(sm.DISCONNECT)
    assert d.machine.done
    assert d.ends == [sm.End(None)]
    assert d.machine.receive({"header": {"messageType": sm.FEED}}) == []


def test_the_push_keeps_its_window_and_settles_only_what_a_receipt_lists() -> None:
    d = Driver(push_chunk_size=1, push_window=2)
    for doc in "abc":
        d.put(doc)
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack())
    assert kinds(d)[1:] == [sm.BATCH_START, sm.BATCH_CONTINUE]  # two in flight, not three
    d.ack_oldest(keep=frozenset({"a"}))
    assert kinds(d)[-1] == sm.BATCH_CONTINUE
    assert d.ack_oldest()
    assert d.ack_oldest()
    assert kinds(d)[-1] == sm.BATCH_END
    assert d.journal == {"a": 1}  # not in its receipt: sent again by the next session
    assert d.machine.report.pushed == 2


def test_a_batch_ack_for_no_chunk_in_flight_ends_the_session() -> None:
    d = Driver()
    d.put("a")
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack())
    d.server(sm.BATCH_ACK, correlation_id="elsewhere", receipt={})
    assert d.machine.done
    assert "no chunk in flight" in str(d.ends[0].error)
    assert d.journal == {"a": 1}


def test_a_frame_refused_alone_rejects_its_change_with_the_code_and_learns_the_limit() -> None:
    d = Driver()
    d.put("big")
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack())
    error = sm.SyncError("frame exceeds the limit of 65536 bytes", code="DG-2007", close_code=1009)
    d.run(d.machine.failed(error))
    assert sm.StoreFrameLimit(65536) in d.effects
    assert d.journal == {}
    assert [r.code for r in d.machine.report.rejected] == ["DG-2007"]
    assert d.ends == [sm.End(error)]


def test_frames_refused_together_make_suspects_sent_alone_next_time() -> None:
    d = Driver(push_chunk_size=2)
    for doc in "abc":
        d.put(doc)
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack())
    d.run(d.machine.failed(sm.SyncError("bad", code="DG-2009")))
    assert d.suspects == {1, 2, 3}
    assert len(d.journal) == 3
    again = Driver(push_chunk_size=2)
    again.machine.suspects = set(d.suspects)
    again.journal = dict(d.journal)
    again.run(again.machine.start())
    again.server(sm.CONNECT_ACK, **connect_ack())
    assert kinds(again)[1:] == [sm.BATCH_START]  # one change, one frame in flight
    assert len(again.frames[again.sent[-1].message_id]) == 1


def test_a_draining_server_sends_a_new_session_away_with_its_hint() -> None:
    d = Driver()
    d.run(d.machine.start())
    d.server(sm.DISCONNECT, retryAfterMs=1500)
    error = d.ends[0].error
    assert isinstance(error, sm.SyncError)
    assert error.retry_after_ms == 1500


def test_a_live_session_feeds_both_ways_and_keeps_the_goodbye_hint() -> None:
    d = Driver(live=True)
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack())
    d.pull_to_live()
    assert d.machine.state == State.LIVE
    assert sm.GoLive() in d.effects
    d.put("x")
    d.run(d.machine.wake())
    assert kinds(d)[-1] == sm.FEED
    d.server(
        sm.FEED,
        startMarkers=Markers(5, 1).to_wire(),
        endMarkers=Markers(6, 1).to_wire(),
        feed={"changeSet": [{"_id": "y", "_revision": 1, "_modified": 9}], "tombstoneMap": {}},
    )
    assert kinds(d)[-1] == sm.FEED_ACK
    assert d.ack_oldest()
    assert d.journal == {}
    d.server(sm.DISCONNECT, retryAfterMs=120_000)
    assert d.ends == [sm.End(None)]
    assert d.machine.retry_after_ms == sm.MAX_RETRY_HINT_MS


def test_a_live_feed_that_skips_ahead_is_a_gap() -> None:
    d = Driver(live=True)
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack())
    d.pull_to_live()
    d.server(sm.FEED, startMarkers=Markers(7, 1).to_wire(), endMarkers=Markers(8, 1).to_wire())
    assert isinstance(d.ends[0].error, sm.GapError)


def test_a_view_replica_refuses_a_server_that_does_not_serve_views() -> None:
    d = Driver(view="open")
    d.run(d.machine.start())
    assert d.sent[0].body["view"] == "open"
    d.server(sm.CONNECT_ACK, **connect_ack())
    assert "does not serve data views" in str(d.ends[0].error)


def test_a_reset_is_repaired_by_range_checks_then_pulled_from_their_markers() -> None:
    d = Driver(stored=Markers(2, 1))
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack(purgeMarker=3))  # behind the horizon
    assert d.machine.state == State.CHECKING
    assert kinds(d)[-1] == sm.RANGE_CHECK
    answer = {"lo": 0, "hi": BUCKETS, "status": "headers", "headers": [["x", 1, 5, False]]}
    d.server(sm.RANGE_RESULT, ranges=[answer], markers=Markers(9, 1).to_wire())
    assert d.sent[-1].message_type == sm.RANGE_FETCH
    assert d.sent[-1].body == {"ids": ["x"]}
    feed = {"changeSet": [{"_id": "x", "_revision": 1, "_modified": 5}], "tombstoneMap": {}}
    d.server(sm.RANGE_DOCS, feed=feed)
    assert sm.RepairLocal(drop=[], push=[]) in d.effects
    assert d.sent[-1].message_type == sm.BATCH_END
    assert d.sent[-1].body["startMarkers"] == Markers(9, 1).to_wire()
    assert d.machine.report.fetched == 1
    assert d.machine.report.repaired == 1


def test_a_range_check_the_server_cannot_sum_falls_back_to_the_reset() -> None:
    d = Driver(stored=Markers(2, 1))
    d.run(d.machine.start())
    d.server(sm.CONNECT_ACK, **connect_ack(purgeMarker=3))
    d.run(d.machine.failed(sm.SyncError("too large to sum", code=sm.RANGES_UNAVAILABLE)))
    assert d.sent[-1].message_type == sm.BATCH_END
    assert d.sent[-1].body["startMarkers"] == Markers(2, 1).to_wire()
    assert not d.machine.done


def test_verify_says_goodbye_when_nothing_differs() -> None:
    d = Driver(purpose=sm.Purpose.VERIFY)
    d.run(d.machine.start())
    assert d.sent[0].body["capabilities"] == ["ranges"]
    d.server(sm.CONNECT_ACK, **connect_ack())
    d.server(sm.RANGE_RESULT, ranges=[{"lo": 0, "hi": BUCKETS, "status": "equal"}])
    assert kinds(d)[-1] == sm.DISCONNECT
    assert d.machine.report.equal is True
    assert d.ends == [sm.End(None)]


@pytest.mark.parametrize("state", [s for s in State if s not in (State.LIVE, State.CLOSED)])
def test_every_unexpected_message_ends_the_session_but_in_live_and_finishing(
    state: State,
) -> None:
    known = {k for s, k in sm.TRANSITIONS if s == state} | {sm.DISCONNECT}
    every = {k for _, k in sm.TRANSITIONS} | {sm.RANGE_RESULT, "no2.sync.nonsense"}
    for kind in sorted(every - known):
        d = Driver()
        d.machine.state = state
        d.server(kind)
        if state == State.FINISHING:
            assert d.machine.state == State.FINISHING
        else:
            assert d.machine.done
            assert f"the server sent {kind}" in str(d.ends[0].error)


# -- any sequence of events ------------------------------------------------------------------

MESSAGES = [
    sm.CONNECT_ACK,
    sm.BATCH_ACK,
    sm.BATCH_END_ACK,
    sm.BATCH_START,
    sm.BATCH_END,
    sm.FEED,
    sm.FEED_ACK,
    sm.DISCONNECT,
    sm.RANGE_RESULT,
    "no2.sync.nonsense",
]
ERRORS = [
    sm.SyncError("frame exceeds the limit of 2048 bytes", code="DG-2007", close_code=1009),
    sm.SyncError("bad change", code="DG-4001"),
    sm.SyncError("dropped", close_code=1006),
    sm.SyncError("no answer from the server within 60 s"),
]
# Mostly what a well-behaved server says next (so that sessions get far), some local changes,
# and now and then something that ends the session: a stray message, a gap, an error, a stop.
KINDS = [
    *["step"] * 70,
    *["put"] * 15,
    *["wake"] * 5,
    *["ack"] * 3,
    *["message"] * 2,
    "feed",
    *["error"] * 2,
    *["stop"] * 2,
]


def _event(raw: tuple[int, int, frozenset[str], str, sm.SyncError, str, int]) -> tuple[str, Any]:
    kind = KINDS[raw[0]]
    return kind, {
        "step": (raw[1], raw[2]),
        "put": raw[5],
        "ack": raw[2],
        "message": raw[3],
        "feed": raw[6],
        "error": raw[4],
    }.get(kind)


events = st.lists(
    st.tuples(
        st.integers(0, len(KINDS) - 1),
        st.integers(0, 3),
        st.frozensets(st.sampled_from("abcde"), max_size=1),
        st.sampled_from(MESSAGES),
        st.sampled_from(ERRORS),
        st.sampled_from("abcde"),
        st.integers(4, 7),
    ).map(_event),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    events,
    st.booleans(),
    st.integers(1, 3),
    st.integers(1, 3),
)
def test_any_sequence_of_events_keeps_the_machine_valid_and_loses_nothing(
    script: list[tuple[str, Any]], live: bool, chunk: int, window: int
) -> None:
    d = Driver(live=live, push_chunk_size=chunk, push_window=window)
    d.put("a")
    d.run(d.machine.start())
    acked: set[tuple[str, int]] = set()
    for what, arg in script:
        before = dict(d.journal)
        if what == "put":
            d.put(arg)
        elif what == "step":
            d.step(*arg)
            acked |= {(i, n) for sent, r in d.receipts for i, n in sent.items() if i in r["added"]}
        elif what == "ack":
            d.ack_oldest(keep=arg)
            acked |= {(i, n) for sent, r in d.receipts for i, n in sent.items() if i in r["added"]}
        elif what == "message":
            body = connect_ack() if arg == sm.CONNECT_ACK else {}
            if arg == sm.BATCH_END:
                body = {"endMarkers": Markers(5, 1).to_wire()}
            d.server(arg, **body)
        elif what == "feed":
            d.server(
                sm.FEED,
                startMarkers=Markers(arg, 1).to_wire(),
                endMarkers=Markers(arg + 1, 1).to_wire(),
            )
        elif what == "error":
            d.run(d.machine.failed(arg))
        elif what == "wake":
            d.run(d.machine.wake())
        else:
            d.run(d.machine.stop())
        # Nothing leaves the journal without a receipt that lists it or a refusal code.
        refused = {(e.doc_id, e.change_no) for e in d.effects if isinstance(e, sm.RejectPending)}
        for doc_id, number in before.items():
            if d.journal.get(doc_id) != number and doc_id in d.journal:
                continue  # edited again: the newer change is pending
            if doc_id not in d.journal:
                assert (doc_id, number) in acked | refused, f"{doc_id}#{number} was lost"
        # A valid state, the windows kept, one ending at most.
        m = d.machine
        assert isinstance(m.state, State)
        assert len(d.ends) == (1 if m.done else 0)
        if m.state == State.LIVE:
            assert len(m.unacked) <= sm.LIVE_FEED_WINDOW
        if m.state == State.PUSHING:
            assert len(m.unacked) <= window
