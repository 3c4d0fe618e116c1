"""The replication session as a pure state machine: messages in, effects out.

No Django, no I/O, no clock of its own (ids and timestamps come from injected callables, time
from the caller). `replication/consumers.py` is the I/O shell: it parses frames, feeds them to
`Session.receive`, runs the effects it gets back, and reports the results of database effects
with the `*_done` methods, which return more effects.

Rules (PROTOCOL.md section 4, docs/protocol.md):

1. A session starts OPEN. The only message allowed there is Connect. Anything else, a frame
   that is not JSON included, is fatal: an error, then close.
2. A valid Connect yields `Authenticate`; the shell checks the token and the collection and
   answers with `connect_accepted` (ConnectAck, state CONNECTED) or `connect_refused`.
3. In CONNECTED the client pushes: batch.start / batch.continue yield `ApplyChunk` (the shell
   applies the chunk and sends batch.ack with the receipt). batch.end ends the push: the
   server answers batch.end.ack, and the session moves to PULLING.
4. In PULLING the server sends the changes after the client's markers in chunks, at most
   `chunks_in_flight` ahead of the client's batch.ack, then batch.end; the client's
   batch.end.ack ends the pull. A client with the `live` capability moves to LIVE; one
   without gets a Disconnect and the session CLOSES.
5. In LIVE the server offers feeds (`offer_feed`), at most `feed_window` unacknowledged; the
   client's feed.ack frees the window. What could not be sent while the window was full is
   read again from the database as one coalesced feed (`ReadFeed`). The client's own feeds
   are applied like push chunks and answered with feed.ack. `tick` closes a session that has
   acknowledged nothing for `feed_ack_timeout` seconds while feeds are outstanding.
6. Disconnect, from either side, closes the session (1000); `shutdown` sends Disconnect and
   closes with 1001.
7. A Connect without a `capabilities` key comes from a Nitrite G3 replica (DataGate's own
   clients always send the key): the session is a G3 session, chosen by what the client says,
   never by a setting. Its transitions are `G3_TRANSITIONS` (no live phase, no token refresh)
   and every message it is sent is cut to the G3 key set of its type (`g3.shape`): no
   `rejected`, no `code`/`fatal`, no `_origin`, integer `nextOffset`s. A G3 receipt lists
   every id received; the changes the server refused are corrected in the pull: before its
   batch.end the session reads the server's version of each refused id (`ReadVersions`) and
   sends it in one more chunk (docs/decisions/0011-a-refused-g3-change-is-corrected-in-the-pull.md).

8. A client that announced the `ranges` capability (and got it back in ConnectAck) may, in
   CONNECTED, send range.check (answered by range.result: each range equal, split into
   sub-ranges with the server's summaries, or listed as headers) and range.fetch (answered by
   range.docs: the held versions of some ids), before its batch.end. The shell reads the
   database (`CheckRanges`, `FetchVersions`); the machine counts them (DG-2031 beyond
   RANGE_CHECKS_MAX / RANGE_FETCHES_MAX). Without the capability both are DG-2006.

9. A Connect may name a data view (`view`, or the URL `/ws/datagate/{t}/{c}/views/{name}/`):
   the session then syncs the documents in the view (docs/protocol.md section 12). ConnectAck
   echoes the capability `views` (an older server ignores the key and does not echo it, so a
   client can tell); `ranges` is not granted. The machine is the same: the shell reads through
   the view and its markers carry the view's epoch. When the client's markers carry the epoch
   of an older definition of the view that the shell can still name (`position_done`'s
   `resync_epoch`), the pull is not a reset: it starts with the difference between the two
   definitions over what the client already has (`ReadDifference`, pages by id, the cursor
   does not move), then goes on from the client's marker as usual, under the new epoch
   (docs/decisions/0016).

Every (state, message type) pair is either a transition in `TRANSITIONS` or a protocol error
DG-2006 that names the message and the state (fatal, 4409). After ConnectAck, a frame that is
not JSON, has no header, names an unknown type or fails validation gets a non-fatal error and
changes nothing; a header naming another tenant, collection, user, transaction or origin is
fatal (DG-2005, 4409).

Theory of operation: the machine only counts positions (sequence numbers) and messages in
flight; documents never pass through it except as opaque feeds it hands to the shell. The
shell reads and writes the database; the machine decides what to read and what to send next.
"""

from __future__ import annotations

import enum
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import CloseCode, DataGateError, ErrorCode, fatal_close_code
from replication.protocol import g3
from replication.protocol import messages as m
from replication.protocol.markers import Markers, PullStart, pull_start
from replication.protocol.ranges import Ask, Summary, hash_from_wire


class State(enum.Enum):
    OPEN = "OPEN"
    CONNECTED = "CONNECTED"  # pushing
    PULLING = "PULLING"
    LIVE = "LIVE"
    CLOSED = "CLOSED"


# --- effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send this message (header included) to the client."""

    message: dict[str, Any]


@dataclass(frozen=True)
class SendShared:
    """Send the feed body the shell is offering (`offer_feed`) under this header."""

    header: dict[str, Any]


@dataclass(frozen=True)
class ReportError:
    """Send this error to the client and record it as an error event."""

    error: DataGateError


@dataclass(frozen=True)
class Close:
    code: int


@dataclass(frozen=True)
class Authenticate:
    """Check the Connect's token and the collection; answer with connect_accepted/refused."""

    connect: m.Connect


@dataclass(frozen=True)
class ApplyChunk:
    """Apply a pushed feed; send `reply` with the apply's `receipt` added (unless the reply
    has its receipt already: `receipt_in_reply`, a G3 session's), then report the ids the
    apply refused with `push_applied`."""

    feed: dict[str, Any]
    message_id: str
    reply: dict[str, Any]
    receipt_in_reply: bool = False


@dataclass(frozen=True)
class ReadPosition:
    """Read the collection's (last_seq, purge_seq, epoch); answer with `position_read`."""


@dataclass(frozen=True)
class ReadChunk:
    """Read changes with after_seq < seq <= up_to_seq, at most `limit`; answer `chunk_read`."""

    after_seq: int
    up_to_seq: int
    limit: int


@dataclass(frozen=True)
class ReadDifference:
    """Read the next page of a view's difference (rule 9): documents with seq <= up_to_seq
    whose membership differs between the client's definition and the current one, by id
    after `after_id`, at most `limit`; answer `difference_done`."""

    after_id: str
    up_to_seq: int
    limit: int


@dataclass(frozen=True)
class ReadVersions:
    """Read what the server holds, readable by the session's user, for these ids (a G3
    session's refused changes); answer with `versions_read`."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class ReadFeed:
    """Read a coalesced live feed after_seq < seq <= up_to_seq; answer with `feed_read`."""

    after_seq: int
    up_to_seq: int
    limit: int


@dataclass(frozen=True)
class RecordAck:
    """The replica acknowledged everything up to `seq` (`pulled` changes more).

    For a live feed.ack, `latency` is the seconds from sending that feed to its ack (the
    console charts it); None for pull acks.
    """

    seq: int
    pulled: int = 0
    latency: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class GoLive:
    """Join the collection's live feed; the session has everything up to `from_seq`."""

    from_seq: int


@dataclass(frozen=True)
class RefreshToken:
    """Check a fresh token for this session; answer `token_refreshed` or `token_refused`."""

    token: str
    message_id: str


@dataclass(frozen=True)
class CheckRanges:
    """Answer a range.check: compare `asks` with the server's summaries (replication/ranges.py)
    and answer with `ranges_answered`."""

    asks: tuple[Ask, ...]
    message_id: str


@dataclass(frozen=True)
class FetchVersions:
    """Read the held versions of `ids` for a range.fetch; answer with `versions_fetched`."""

    ids: tuple[str, ...]
    message_id: str


Effect = (
    Send
    | SendShared
    | ReportError
    | Close
    | Authenticate
    | ApplyChunk
    | ReadPosition
    | ReadChunk
    | ReadDifference
    | ReadVersions
    | ReadFeed
    | RecordAck
    | GoLive
    | RefreshToken
    | CheckRanges
    | FetchVersions
)


# --- the table ------------------------------------------------------------------------------

# (state, message type) -> name of the handler. Every pair not listed is DG-2006.
TRANSITIONS: dict[tuple[State, str], str] = {
    (State.OPEN, m.CONNECT): "_on_connect",
    (State.OPEN, m.DISCONNECT): "_on_disconnect",
    (State.CONNECTED, m.BATCH_START): "_on_push_chunk",
    (State.CONNECTED, m.BATCH_CONTINUE): "_on_push_chunk",
    (State.CONNECTED, m.BATCH_END): "_on_push_end",
    # Range checks and repair fetches, before the pull (docs/protocol.md, "Ranges").
    (State.CONNECTED, m.RANGE_CHECK): "_on_range_check",
    (State.CONNECTED, m.RANGE_FETCH): "_on_range_fetch",
    (State.CONNECTED, m.DISCONNECT): "_on_disconnect",
    (State.PULLING, m.BATCH_ACK): "_on_pull_ack",
    (State.PULLING, m.BATCH_END_ACK): "_on_pull_end_ack",
    (State.PULLING, m.DISCONNECT): "_on_disconnect",
    (State.LIVE, m.FEED): "_on_client_feed",
    (State.LIVE, m.FEED_ACK): "_on_feed_ack",
    (State.LIVE, m.DISCONNECT): "_on_disconnect",
    # A fresh token is welcome in any state after ConnectAck (docs/protocol.md).
    (State.CONNECTED, m.TOKEN_REFRESH): "_on_token_refresh",
    (State.PULLING, m.TOKEN_REFRESH): "_on_token_refresh",
    (State.LIVE, m.TOKEN_REFRESH): "_on_token_refresh",
}

# A G3 session (rule 7): the same conversation without the live phase and token refresh,
# which G3 replicas do not have.
G3_TRANSITIONS: dict[tuple[State, str], str] = {
    (state, message_type): handler
    for (state, message_type), handler in TRANSITIONS.items()
    if state is not State.LIVE
    and message_type != m.TOKEN_REFRESH
    and message_type not in m.RANGE_MESSAGES
}

# Range messages one session may send at most (DG-2031): a range check ends within about
# log16(4096) + 1 rounds, and a repair's fetches are its differences / RANGE_FETCH_MAX.
RANGE_CHECKS_MAX = 64
RANGE_FETCHES_MAX = 1000


@dataclass
class _PullChunk:
    last_seq: int
    count: int


@dataclass
class _Pull:
    start: Markers  # what the client holds (or zeros on reset)
    end: Markers  # the server position at the start of the pull
    reset: bool
    limit: int
    cursor: int  # next chunk reads after this seq
    exhausted: bool = False
    position_known: bool = False
    reading: bool = False
    chunks_sent: int = 0
    offset: int = 0
    in_flight: OrderedDict[str, _PullChunk] = field(default_factory=OrderedDict)
    end_sent: bool = False
    corrections_read: bool = False  # G3: refused changes were read back (rule 7)
    # A view replica synced through an older definition (rule 9): the documents whose
    # membership changed are read first, by id after `difference_after`.
    difference: bool = False
    difference_after: str = ""


@dataclass
class Limits:
    chunk_size: int = 500
    chunks_in_flight: int = 4
    feed_window: int = 64
    feed_ack_timeout: float = 60.0
    tombstone_ttl_days: int = 30


class Session:
    """One replication session (see the module docstring)."""

    def __init__(
        self,
        *,
        tenant: str,
        collection: str,
        server_id: str,
        limits: Limits | None = None,
        new_id: Callable[[], str] | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.tenant = tenant
        self.collection = collection
        self.server_id = server_id
        self.limits = limits or Limits()
        self._new_id = new_id or _message_ids()
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.state = State.OPEN
        self.connecting = False  # a Connect is being authenticated
        self.transaction_id: str | None = None
        self.origin: str | None = None
        self.user_name: str | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.view: str | None = None  # the data view the session syncs (rule 9)
        self.read_only = False
        self.epoch = 0
        self.pull: _Pull | None = None
        # live phase
        self.sent_seq = 0
        self.acked_seq = 0
        self.head_seq = 0
        self.catching_up = False
        self.feeds_in_flight: OrderedDict[str, int] = OrderedDict()
        self.feeds_sent_at: dict[str, float] = {}
        self.waiting_since: float | None = None
        self._now = 0.0
        self._connect_id: str | None = None
        # range checks (rule 8)
        self.range_checks = 0
        self.range_fetches = 0
        # G3 sessions (rule 7)
        self.g3 = False
        self.transitions = TRANSITIONS
        self.g3_offset = 0  # the last nextOffset a G3 push chunk carried
        self.refused: dict[str, g3.Pushed] = {}
        self.client_end: tuple[int, int] | None = None

    # --- helpers ------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return m.CAPABILITY_LIVE in self.capabilities

    def header(self, message_type: str, correlation_id: str | None = None) -> dict[str, Any]:
        return {
            "id": self._new_id(),
            "transactionId": self.transaction_id,
            "correlationId": correlation_id,
            "tenant": self.tenant,
            "collection": self.collection,
            "userName": self.user_name,
            "timestamp": self._clock_ms(),
            "messageType": message_type,
            "origin": self.server_id,
        }

    def _message(
        self,
        message_type: str,
        body: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"header": self.header(message_type, correlation_id)}
        message.update(body or {})
        return g3.shape(message) if self.g3 else message

    def error_message(self, error: DataGateError) -> dict[str, Any]:
        return self._message(
            m.ERROR, {"error": error.text, "code": error.code, "fatal": error.fatal}
        )

    def _fatal(self, error: DataGateError) -> list[Effect]:
        close = fatal_close_code(error, before_connect_ack=self.state is State.OPEN)
        error.fatal = True
        self.state = State.CLOSED
        return [ReportError(error), Close(close)]

    # --- input: frames ------------------------------------------------------------------

    def frame_rejected(self, error: DataGateError) -> list[Effect]:
        """A frame that could not be parsed (not JSON, no header, unknown type, invalid)."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.OPEN:
            return self._fatal(error)
        return [ReportError(error)]

    def receive(self, message: m.Body, *, now: float | None = None) -> list[Effect]:
        """A parsed client message, received at `now` (seconds, any monotonic clock)."""
        if now is not None:
            self._now = now
        if self.state is State.CLOSED:
            return []
        message_type = message.header.messageType
        mismatch = self._header_mismatch(message)
        if mismatch is not None:
            return self._fatal(mismatch)
        handler = self.transitions.get((self.state, message_type))
        if handler is None or (self.connecting and message_type != m.DISCONNECT):
            return self._fatal(
                DataGateError(
                    ErrorCode.WRONG_STATE, message_type=message_type, state=self.state.value
                )
            )
        effects: list[Effect] = getattr(self, handler)(message)
        return effects

    def _header_mismatch(self, message: m.Body) -> DataGateError | None:
        header = message.header
        expected: list[tuple[str, str | None, str | None]] = [
            ("tenant", header.tenant, self.tenant),
            ("collection", header.collection, self.collection),
        ]
        if self.state is not State.OPEN:
            expected += [
                ("transactionId", header.transactionId, self.transaction_id),
                ("userName", header.userName, self.user_name),
                ("origin", header.origin, self.origin),
            ]
        for name, got, want in expected:
            if got is not None and want is not None and got != want:
                return DataGateError(ErrorCode.HEADER_MISMATCH, field=name, got=got, expected=want)
        return None

    # --- connect ------------------------------------------------------------------------

    def _on_connect(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.Connect)
        if not message.header.origin:
            return self._fatal(
                DataGateError(
                    ErrorCode.INVALID_MESSAGE,
                    message_type=m.CONNECT,
                    detail="header.origin: the replica id is required",
                )
            )
        self.connecting = True
        self.origin = message.header.origin
        self.transaction_id = message.header.transactionId or self._new_id()
        self.capabilities = frozenset(message.capabilities)
        self._connect_id = message.header.id
        if message.view is not None:
            self.view = message.view
        if "capabilities" not in message.model_fields_set:
            self.g3 = True
            self.transitions = G3_TRANSITIONS
        return [Authenticate(message)]

    @property
    def ranges(self) -> bool:
        # A view's replica holds part of the collection: the collection's summaries say nothing.
        return m.CAPABILITY_RANGES in self.capabilities and not self.g3 and self.view is None

    def connect_accepted(
        self, *, user_name: str, read_only: bool, end_markers: Markers, purge_seq: int = 0
    ) -> list[Effect]:
        """The token and collection are fine: ConnectAck, and the push phase begins."""
        self.connecting = False
        self.state = State.CONNECTED
        self.user_name = user_name
        self.read_only = read_only
        self.epoch = end_markers.epoch
        body: dict[str, Any]
        if self.g3:
            # As Nitrite's own server did; G3 reads `nextOffset` as an int (NITRITE-G3.md 9.5).
            body = {"nextOffset": 0, "batchSize": 0, "tombstoneTtl": self.limits.tombstone_ttl_days}
            return [Send(self._message(m.CONNECT_ACK, body, self._connect_id))]
        body = {
            "tombstoneTtl": self.limits.tombstone_ttl_days,
            "batchSize": self.limits.chunk_size,
            "endMarkers": end_markers.to_wire(),
            "capabilities": sorted(self._granted()),
            "readOnly": read_only,
        }
        if self.ranges:
            # With it a client can tell, before its pull, that its markers are behind the
            # purge horizon and repair by ranges instead of taking a reset snapshot.
            body["purgeMarker"] = purge_seq
        return [Send(self._message(m.CONNECT_ACK, body, self._connect_id))]

    def _granted(self) -> set[str]:
        granted = set(self.capabilities & {m.CAPABILITY_LIVE})
        if self.ranges:
            granted.add(m.CAPABILITY_RANGES)
        if self.view is not None:
            granted.add(m.CAPABILITY_VIEWS)
        return granted

    def connect_refused(self, error: DataGateError) -> list[Effect]:
        self.connecting = False
        return self._fatal(error)

    # --- push ---------------------------------------------------------------------------

    def _on_push_chunk(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.BatchChunk)
        if self.g3:
            return self._on_g3_push_chunk(message)
        reply = self._message(
            m.BATCH_ACK,
            {
                "nextOffset": message.nextOffset,
                "batchSize": message.batchSize,
                "startMarkers": _echo(message.startMarkers),
                "endMarkers": _echo(message.endMarkers),
            },
            message.header.id,
        )
        return [ApplyChunk(message.feed.to_wire(), message.header.id, reply)]

    def _on_g3_push_chunk(self, message: m.BatchChunk) -> list[Effect]:
        # A G3 retry chunk has a null nextOffset, and G3 unboxes the ack's to an int: echo
        # the last one it sent (NITRITE-G3.md section 2.2).
        if message.nextOffset is not None:
            self.g3_offset = message.nextOffset
        feed = g3.incoming_feed(message.feed.to_wire())
        reply = self._message(
            m.BATCH_ACK,
            {
                "nextOffset": self.g3_offset,
                "batchSize": message.batchSize,
                "startMarkers": _echo(message.startMarkers),
                "endMarkers": _echo(message.endMarkers),
                "receipt": g3.receipt_of_feed(feed),
            },
            message.header.id,
        )
        return [ApplyChunk(feed, message.header.id, reply, receipt_in_reply=True)]

    def push_applied(self, *, feed: dict[str, Any], refused_ids: set[str]) -> list[Effect]:
        """A pushed chunk was applied; the server refused the changes of `refused_ids`. A G3
        session corrects them in its pull (rule 7); other sessions' receipts said it all."""
        if self.g3 and refused_ids:
            self.refused.update(g3.refused_pushes(feed, refused_ids))
        return []

    def _on_push_end(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.BatchEnd)
        if self.g3 and message.endMarkers is not None:
            self.client_end = (
                message.endMarkers.collectionMarker or 0,
                message.endMarkers.tombstoneMarker or 0,
            )
        self.state = State.PULLING
        limit = self.limits.chunk_size
        if message.batchSize is not None:
            limit = min(limit, message.batchSize)
        start = m.markers_or_zero(message.startMarkers)
        self.pull = _Pull(start=start, end=Markers(), reset=False, limit=limit, cursor=start.seq)
        ack = self._message(
            m.BATCH_END_ACK,
            {
                "startMarkers": _echo(message.startMarkers),
                "endMarkers": _echo(message.endMarkers),
            },
            message.header.id,
        )
        return [Send(ack), ReadPosition()]

    # --- range checks (rule 8) ------------------------------------------------------------

    def _ranges_refused(self, message_type: str, what: str, count: int, limit: int) -> list[Effect]:
        if not self.ranges:
            return self._fatal(
                DataGateError(
                    ErrorCode.WRONG_STATE,
                    message_type=message_type,
                    state=f"{self.state.value} (no `ranges` capability)",
                )
            )
        if count > limit:
            return self._fatal(DataGateError(ErrorCode.RANGE_ROUNDS, limit=limit, what=what))
        return []

    def _on_range_check(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.RangeCheck)
        self.range_checks += 1
        refused = self._ranges_refused(
            m.RANGE_CHECK, "range checks", self.range_checks, RANGE_CHECKS_MAX
        )
        if refused:
            return refused
        asks = tuple(
            Ask(r.lo, r.hi, Summary(r.count, hash_from_wire(r.hash))) for r in message.ranges
        )
        return [CheckRanges(asks, message.header.id)]

    def ranges_answered(self, *, body: dict[str, Any], correlation_id: str) -> list[Effect]:
        """The shell compared the ranges: send the range.result."""
        if self.state is not State.CONNECTED:
            return []
        return [Send(self._message(m.RANGE_RESULT, body, correlation_id))]

    def _on_range_fetch(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.RangeFetch)
        self.range_fetches += 1
        refused = self._ranges_refused(
            m.RANGE_FETCH, "range fetches", self.range_fetches, RANGE_FETCHES_MAX
        )
        if refused:
            return refused
        return [FetchVersions(tuple(message.ids), message.header.id)]

    def versions_fetched(self, *, body: dict[str, Any], correlation_id: str) -> list[Effect]:
        """The shell read the fetched ids: send the range.docs."""
        if self.state is not State.CONNECTED:
            return []
        return [Send(self._message(m.RANGE_DOCS, body, correlation_id))]

    # --- pull ---------------------------------------------------------------------------

    def position_done(
        self, *, last_seq: int, purge_seq: int, epoch: int, resync_epoch: int | None = None
    ) -> list[Effect]:
        """The collection's position at the start of the pull. `resync_epoch`: the client's
        epoch names an older definition of the session's view, whose difference the shell
        can read (rule 9); the client's position then stands under the new `epoch`."""
        pull = self.pull
        if self.state is not State.PULLING or pull is None:
            return []
        self.epoch = epoch
        client = pull.start
        difference = resync_epoch is not None and client.epoch == resync_epoch and client.seq > 0
        if difference:
            client = Markers(client.seq, epoch)
        how = pull_start(client=client, last_seq=last_seq, purge_seq=purge_seq, epoch=epoch)
        pull.reset = how is not PullStart.FROM_MARKER
        if pull.reset:
            pull.start = Markers(0, epoch)
            pull.cursor = 0
        else:
            pull.start = client
            pull.difference = difference
        pull.end = Markers(last_seq, epoch)
        pull.position_known = True
        if pull.cursor >= last_seq and not pull.reset and not pull.difference:
            pull.exhausted = True
            return self._pull_progress()
        return self._next_read()

    def _next_read(self) -> list[Effect]:
        pull = self.pull
        assert pull is not None
        if pull.exhausted or pull.reading or len(pull.in_flight) >= self.limits.chunks_in_flight:
            return []
        pull.reading = True
        if pull.difference:
            return [ReadDifference(pull.difference_after, pull.start.seq, pull.limit)]
        return [ReadChunk(pull.cursor, pull.end.seq, pull.limit)]

    def difference_done(
        self, *, feed: dict[str, Any], count: int, last_id: str, more: bool
    ) -> list[Effect]:
        """A page of the view's difference was read (rule 9): `count` documents (before any
        read filter), the last of them `last_id`; `more` when another page may follow. The
        page goes out as a pull chunk; the pull's cursor does not move."""
        pull = self.pull
        if self.state is not State.PULLING or pull is None:
            return []
        pull.reading = False
        effects: list[Effect] = []
        if count:
            effects.append(self._pull_chunk(feed, count, pull.cursor))
        pull.difference_after = last_id
        if not more:
            pull.difference = False
            if pull.cursor >= pull.end.seq:
                pull.exhausted = True
        return effects + self._pull_progress()

    def _pull_chunk(self, feed: dict[str, Any], count: int, covered: int) -> Send:
        pull = self.pull
        assert pull is not None
        message_type = m.BATCH_START if pull.chunks_sent == 0 else m.BATCH_CONTINUE
        body: dict[str, Any] = {
            "feed": feed,
            "nextOffset": pull.offset + count,
            "batchSize": pull.limit,
            "startMarkers": pull.start.to_wire(),
            "endMarkers": pull.end.to_wire(),
        }
        if pull.reset and pull.chunks_sent == 0:
            body["reset"] = True
        message = self._message(message_type, body)
        pull.in_flight[message["header"]["id"]] = _PullChunk(covered, count)
        pull.chunks_sent += 1
        pull.offset += count
        return Send(message)

    def chunk_done(self, *, feed: dict[str, Any], covered: int, count: int) -> list[Effect]:
        """A chunk was read: `count` changes (before any read filter), covering up to `covered`."""
        pull = self.pull
        if self.state is not State.PULLING or pull is None:
            return []
        pull.reading = False
        covered = max(covered, pull.cursor)
        if covered >= pull.end.seq:
            pull.exhausted = True
        effects: list[Effect] = []
        if count or pull.reset or pull.chunks_sent:
            effects.append(self._pull_chunk(feed, count, covered))
        pull.cursor = covered
        effects += self._pull_progress()
        return effects

    def _pull_progress(self) -> list[Effect]:
        pull = self.pull
        assert pull is not None
        if not pull.exhausted:
            return self._next_read()
        if pull.in_flight or pull.end_sent or pull.reading:
            return []
        if self.refused and not pull.corrections_read:
            pull.corrections_read = pull.reading = True
            return [ReadVersions(tuple(sorted(self.refused)))]
        pull.end_sent = True
        body: dict[str, Any] = {
            "startMarkers": pull.start.to_wire(),
            "endMarkers": pull.end.to_wire(),
            "batchSize": pull.limit,
        }
        if self.g3:
            body["nextOffset"] = pull.offset
        return [Send(self._message(m.BATCH_END, body))]

    def versions_done(self, *, held: dict[str, g3.Held | None]) -> list[Effect]:
        """The server's versions of the refused ids: send them as one more pull chunk."""
        pull = self.pull
        if self.state is not State.PULLING or pull is None:
            return []
        pull.reading = False
        feed = g3.corrections(
            refused=self.refused, held=held, client_end=self.client_end, now_ms=self._clock_ms()
        )
        self.refused = {}
        count = len(feed["changeSet"]) + len(feed["tombstoneMap"])
        effects: list[Effect] = []
        if count:
            message_type = m.BATCH_START if pull.chunks_sent == 0 else m.BATCH_CONTINUE
            body = {
                "feed": feed,
                "nextOffset": pull.offset + count,
                "batchSize": pull.limit,
                "startMarkers": pull.start.to_wire(),
                "endMarkers": pull.end.to_wire(),
            }
            message = self._message(message_type, body)
            # Not changes of the collection: acking them moves the replica's position nowhere.
            pull.in_flight[message["header"]["id"]] = _PullChunk(pull.cursor, 0)
            pull.chunks_sent += 1
            pull.offset += count
            effects.append(Send(message))
        return [*effects, *self._pull_progress()]

    def _on_pull_ack(self, message: m.Body) -> list[Effect]:
        pull = self.pull
        assert pull is not None
        if not pull.in_flight:
            return self._fatal(
                DataGateError(
                    ErrorCode.WRONG_STATE,
                    message_type=m.BATCH_ACK,
                    state=f"{self.state.value} (no chunk awaits an ack)",
                )
            )
        correlation = message.header.correlationId
        if correlation is not None and correlation in pull.in_flight:
            chunk = pull.in_flight.pop(correlation)
        else:
            _, chunk = pull.in_flight.popitem(last=False)
        return [RecordAck(chunk.last_seq, chunk.count), *self._pull_progress()]

    def _on_pull_end_ack(self, message: m.Body) -> list[Effect]:
        pull = self.pull
        assert pull is not None
        if not pull.end_sent:
            return self._fatal(
                DataGateError(
                    ErrorCode.WRONG_STATE,
                    message_type=m.BATCH_END_ACK,
                    state=f"{self.state.value} (the server's batch.end was not sent yet)",
                )
            )
        end = pull.end.seq
        effects: list[Effect] = [RecordAck(end)]
        if not self.live:
            self.state = State.CLOSED
            return [*effects, Send(self._message(m.DISCONNECT)), Close(CloseCode.NORMAL)]
        self.state = State.LIVE
        self.sent_seq = self.acked_seq = self.head_seq = end
        return [*effects, GoLive(end)]

    # --- live ---------------------------------------------------------------------------

    def _window_full(self) -> bool:
        return len(self.feeds_in_flight) >= self.limits.feed_window

    def offer_feed(self, *, start: int, end: int, shareable: bool, now: float) -> list[Effect]:
        """The collection moved to `end`; the shell holds the feed for (start, end]."""
        self._now = now
        if self.state is not State.LIVE:
            return []
        self.head_seq = max(self.head_seq, end)
        if end <= self.sent_seq or self.catching_up or self._window_full():
            return []
        if start == self.sent_seq and shareable:
            header = self.header(m.FEED)
            self._feed_sent(header["id"], end, now)
            return [SendShared(header)]
        return self._catch_up()

    def notice_head(self, *, head: int, now: float) -> list[Effect]:
        """The collection is known to be at `head`: catch up if the session is behind."""
        self._now = now
        if self.state is not State.LIVE:
            return []
        self.head_seq = max(self.head_seq, head)
        return self._catch_up()

    def _catch_up(self) -> list[Effect]:
        if self.catching_up or self._window_full() or self.head_seq <= self.sent_seq:
            return []
        self.catching_up = True
        return [ReadFeed(self.sent_seq, self.head_seq, self.limits.chunk_size)]

    def feed_done(
        self, *, feed: dict[str, Any], covered: int, count: int, now: float
    ) -> list[Effect]:
        """A coalesced feed was read: `count` changes (before any read filter), up to `covered`."""
        self._now = now
        self.catching_up = False
        if self.state is not State.LIVE:
            return []
        start = self.sent_seq
        if covered <= start:
            return self._catch_up()
        body = {
            "feed": feed,
            "startMarkers": Markers(start, self.epoch).to_wire(),
            "endMarkers": Markers(covered, self.epoch).to_wire(),
        }
        message = self._message(m.FEED, body)
        self._feed_sent(message["header"]["id"], covered, now)
        return [Send(message), *self._catch_up()]

    def _feed_sent(self, message_id: str, end: int, now: float) -> None:
        if not self.feeds_in_flight:
            self.waiting_since = now
        self.feeds_in_flight[message_id] = end
        self.feeds_sent_at[message_id] = now
        self.sent_seq = end

    def _on_feed_ack(self, message: m.Body) -> list[Effect]:
        if not self.feeds_in_flight:
            return []  # an ack for nothing outstanding changes nothing
        correlation = message.header.correlationId
        sent_at: float | None = None
        if correlation is not None and correlation in self.feeds_in_flight:
            # Feeds are acked in order: an ack covers every older feed too.
            end = self.feeds_in_flight[correlation]
            while self.feeds_in_flight:
                # By id, not seq: a removals feed shares its end with the feed before it.
                sent_id, _ = self.feeds_in_flight.popitem(last=False)
                sent_at = self.feeds_sent_at.pop(sent_id, sent_at)
                if sent_id == correlation:
                    break
        else:
            acked_id, end = self.feeds_in_flight.popitem(last=False)
            sent_at = self.feeds_sent_at.pop(acked_id, None)
        self.acked_seq = max(self.acked_seq, end)
        self.waiting_since = self._now if self.feeds_in_flight else None
        latency = max(0.0, self._now - sent_at) if sent_at is not None else None
        return [RecordAck(self.acked_seq, latency=latency), *self._catch_up()]

    def tick(self, *, now: float) -> list[Effect]:
        """Time passes: close a live session that stopped acknowledging (DG-5001, 4429)."""
        self._now = now
        if self.state is not State.LIVE or not self.feeds_in_flight or self.waiting_since is None:
            return []
        if now - self.waiting_since < self.limits.feed_ack_timeout:
            return []
        return self._fatal(
            DataGateError(
                ErrorCode.FEED_ACK_TIMEOUT,
                seconds=int(self.limits.feed_ack_timeout),
                outstanding=len(self.feeds_in_flight),
            )
        )

    def _on_client_feed(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.Feed)
        reply = self._message(m.FEED_ACK, {}, message.header.id)
        return [ApplyChunk(message.feed.to_wire(), message.header.id, reply)]

    # --- access during the session (replication/services/sessions.py) ------------------

    def _on_token_refresh(self, message: m.Body) -> list[Effect]:
        assert isinstance(message, m.TokenRefresh)
        return [RefreshToken(message.authToken, message.header.id)]

    def token_refreshed(
        self, *, expires_ms: int, scopes: list[str], read_only: bool, correlation_id: str
    ) -> list[Effect]:
        """The fresh token is good: the session goes on with it."""
        if self.state is State.CLOSED:
            return []
        self.read_only = read_only
        body = {"expires": expires_ms, "scopes": scopes, "readOnly": read_only}
        return [Send(self._message(m.TOKEN_REFRESH_ACK, body, correlation_id))]

    def removals(self, *, tombstones: dict[str, int], now: float) -> list[Effect]:
        """Documents the user may no longer read leave the replica: a feed of tombstones.

        Its marker range is empty (start = end = what was sent): these are not changes of
        the collection, so the client's position does not move. Only a live session gets
        it; other sessions are short and read through the new filter from now on.
        """
        self._now = now
        if self.state is not State.LIVE or not tombstones:
            return []
        markers = Markers(self.sent_seq, self.epoch).to_wire()
        body = {
            "feed": {"changeSet": [], "tombstoneMap": tombstones},
            "startMarkers": markers,
            "endMarkers": markers,
        }
        message = self._message(m.FEED, body)
        self._feed_sent(message["header"]["id"], self.sent_seq, now)
        return [Send(message)]

    # --- the end ------------------------------------------------------------------------

    def _on_disconnect(self, message: m.Body) -> list[Effect]:
        self.state = State.CLOSED
        return [Close(CloseCode.NORMAL)]

    def disconnect(self) -> list[Effect]:
        """An operator ends the session (the console): Disconnect, then close 1000."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        return [Send(self._message(m.DISCONNECT)), Close(CloseCode.NORMAL)]

    def shutdown(self, retry_after_ms: int | None = None) -> list[Effect]:
        """The server is going away: Disconnect (with a hint of when to come back), close 1001."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        body = None if retry_after_ms is None else {"retryAfterMs": retry_after_ms}
        return [Send(self._message(m.DISCONNECT, body)), Close(CloseCode.GOING_AWAY)]

    def fail(self, error: DataGateError) -> list[Effect]:
        """The shell hit an error it cannot recover from (e.g. an internal error)."""
        if self.state is State.CLOSED:
            return []
        return self._fatal(error)


def _message_ids() -> Callable[[], str]:
    """Unique message ids for one session: a random UUID, then a counter in its last part.

    A live session sends a header per feed; a fresh uuid4 for each was 2% of a busy fan-out
    server's CPU (bench/RESULTS.md)."""
    base = str(uuid.uuid4())[:-12]
    counter = itertools.count(int(uuid.uuid4().hex[:8], 16) << 16)
    return lambda: f"{base}{next(counter) & 0xFFFFFFFFFFFF:012x}"


def _echo(raw: m.WireMarkers | None) -> dict[str, int | None] | None:
    return raw.to_wire() if raw is not None else None
