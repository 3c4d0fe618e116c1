"""One replica's sync session as a pure state machine: events in, effects out.

No I/O here: no websocket, no SQLite, no clock, no sleeping. `datagate_replica/sync.py` is the
async shell: it opens the websocket, feeds what arrives to `SyncMachine.receive`, performs the
effects it gets back (send a message, read or write the store, tell the application) in order,
and reports the results of store reads with the `*_read` / `*_done` methods, which return more
effects. Like the server's `replication/protocol/machine.py`, the rules come first, then the
table of transitions, then the effects.

Rules (PROTOCOL.md section 4, docs/protocol.md section 3):

1. `start()` sends Connect (capabilities `live`, `ranges`, `views` as configured): CONNECTING.
   connect.ack moves to PUSHING. A replica of a view refuses a server that does not echo
   `views` (an older server would send the whole collection).
2. PUSHING sends the journal in chunks (batch.start, then batch.continue), at most
   `push_window` ahead of their batch.acks (one while there are suspects, so that a refusal
   names its frame). The machine asks for journal entries with `ReadJournal`; the shell
   answers with `journal_read`. A batch.ack settles its chunk (`Settle`): a local change
   leaves the journal only when a receipt lists it.
3. When the journal is sent and acknowledged: if the stored markers would get a reset
   snapshot and the server granted `ranges`, CHECKING compares the replica with the server
   range by range (`ReadHeld`, range.check / range.result), FETCHING fetches what the
   server holds newer or this replica lacks (range.fetch / range.docs), `RepairLocal` drops or
   journals the rest, and PUSHING runs again; the pull then starts from the markers of the
   first range.result. DG-2030 (the server cannot sum this user's view) falls back to the
   reset snapshot.
4. ENDING sends batch.end with the markers to pull from, and waits for batch.end.ack.
5. PULLING applies each chunk by the conflict rule (`ApplyRemote`) and acknowledges it; a pull
   whose first chunk says `reset` is a snapshot, completed by `ResetComplete` (which journals
   again what the server lost after a restore). The pull's batch.end stores its endMarkers
   (`StoreMarkers`) and is acknowledged.
6. A live session then goes LIVE (`GoLive`): the server's feeds are applied with their
   markers, and a feed that does not start where the replica is raises `GapError`; local
   changes go out as feeds, at most four in flight (one with suspects), each settled by its
   feed.ack. `wake()` (a local change, or the shell's one-second tick) sends what is new;
   `stop()` sends Disconnect and ends the session. A session that is not live waits in
   FINISHING for the server's Disconnect (or five seconds).
7. Disconnect from the server ends the session: in LIVE or FINISHING normally (its
   `retryAfterMs`, if any, becomes `retry_after_ms`), elsewhere with a SyncError carrying the
   hint. A message the current state does not expect ends it with a SyncError, except in LIVE,
   where it is ignored.
8. `failed(error)` reports that the link failed (a server error, a close, a timeout). When the
   server ended the session over a frame it could not take (DG-2007, close 1009, DG-2001/2004/
   2009, a DG-4xxx), the frames in flight decide: one frame holding one change → that change
   is rejected with the server's code (`RejectPending`); otherwise every change in flight
   becomes a suspect (`StoreSuspects`), sent alone from then on. DG-2007's text teaches the
   server's frame limit (`StoreFrameLimit`).
9. `verify()` sessions (purpose VERIFY or REPAIR) connect with `ranges` only, check, and either
   say goodbye (no difference, or VERIFY) or repair, push and pull like a sync (REPAIR).

Every session ends with exactly one `End` effect (error None: a clean end), after which the
machine is CLOSED and every event returns no effect.
"""

from __future__ import annotations

import enum
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datagate_replica.clock import DELETE, WRITE, VersionKey
from datagate_replica.ranges import (
    BUCKETS,
    EXTRA,
    MISSING,
    NEWER,
    STALE,
    Difference,
    Held,
    LocalIndex,
    compare,
)
from datagate_replica.store import (
    Markers,
    PendingChange,
    RejectedChange,
    Settlement,
    StoreError,
    Version,
    encoded_size,
)

log = logging.getLogger("datagate_replica")

CONNECT = "no2.sync.connect"
CONNECT_ACK = "no2.sync.connect.ack"
ERROR = "no2.sync.error"
DISCONNECT = "no2.sync.disconnect"
BATCH_START = "no2.sync.batch.start"
BATCH_CONTINUE = "no2.sync.batch.continue"
BATCH_END = "no2.sync.batch.end"
BATCH_ACK = "no2.sync.batch.ack"
BATCH_END_ACK = "no2.sync.batch.end.ack"
FEED = "no2.sync.feed"
FEED_ACK = "no2.sync.feed.ack"
RANGE_CHECK = "no2.sync.range.check"
RANGE_RESULT = "no2.sync.range.result"
RANGE_FETCH = "no2.sync.range.fetch"
RANGE_DOCS = "no2.sync.range.docs"
CAPABILITY_RANGES = "ranges"
# A replica of a data view (docs/protocol.md section 12): only its documents come down.
CAPABILITY_VIEWS = "views"
RANGE_CHECK_MAX = 256  # ranges per range.check (the server's limit)
RANGE_FETCH_MAX = 500  # ids per range.fetch (the server's limit)
RANGE_FETCH_WINDOW = 4  # range.fetch messages in flight
RANGE_ROUNDS_MAX = 48  # range.check messages per session (the server allows 64)
RANGES_UNAVAILABLE = "DG-2030"  # the server cannot sum this user's view: take the reset
LIVE_FEED_WINDOW = 4  # local feeds in flight in the live phase
FINISH_WAIT = 5.0  # seconds a session that is not live waits for the server's Disconnect

# Close codes after which trying again with the same token cannot help.
CLOSE_NOT_AUTHENTICATED = 4401
# The longest a server's retry hint may delay a reconnect.
MAX_RETRY_HINT_MS = 60_000
CLOSE_FRAME_TOO_LARGE = 1009
ID_MAX_LENGTH = 128
FRAME_TOO_LARGE = "DG-2007"
DOCUMENT_TOO_LARGE = "DG-4013"
# Fatal errors that a frame we sent causes by what it holds (docs/errors.md): not JSON, an
# invalid message, too large, too deep, a change the server could not read.
FRAME_FAULTS = frozenset({"DG-2001", "DG-2004", FRAME_TOO_LARGE, "DG-2009"})
# DG-2007's text names the server's limit: "... exceeds the limit of N bytes".
LIMIT_IN_TEXT = re.compile(r"limit of (\d+) bytes")
META_BYTES = 512  # a change's meta fields and its share of the frame's keys, in a chunk


# --- errors and the report ------------------------------------------------------------------


class SyncError(Exception):
    """A session ended abnormally. The next session resumes from what is stored."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        close_code: int | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.retry_after_ms = retry_after_ms  # a stopping server's hint (docs/protocol.md 3.5)


class AuthenticationError(SyncError):
    """The server refused the token (close 4401): reconnecting with it will not help."""


class GapError(SyncError):
    """A live feed did not start where this replica is: reconnect and pull what was missed."""


def frame_fault(error: SyncError) -> bool:
    """Whether the server ended the session over the content of a frame we sent."""
    return (
        error.close_code == CLOSE_FRAME_TOO_LARGE
        or error.code in FRAME_FAULTS
        or error.code.startswith("DG-4")
    )


@dataclass
class SessionReport:
    """What one session did."""

    pushed: int = 0
    rejected: list[RejectedChange] = field(default_factory=list)
    pulled: int = 0
    reset: bool = False
    restored: bool = False
    requeued: int = 0
    markers: Markers = field(default_factory=Markers)
    read_only: bool = False
    # range checks (docs/protocol.md, "Ranges"): a reset repaired by difference, or verify
    repaired: int = 0  # differences repaired (fetched, dropped or pushed again)
    differences: list[Difference] = field(default_factory=list)
    range_rounds: int = 0  # range.check messages sent
    fetched: int = 0  # versions fetched by range.fetch
    equal: bool | None = None  # verify: the replica held what the server holds


# --- pure helpers ---------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_feed(feed: object) -> tuple[list[Version], list[dict[str, str]]]:
    """The versions of a wire feed, and a `rejected` receipt entry for each malformed change."""
    versions: list[Version] = []
    rejected: list[dict[str, str]] = []
    if not isinstance(feed, Mapping):
        return versions, rejected
    for index, raw in enumerate(feed.get("changeSet") or []):
        if not isinstance(raw, Mapping):
            rejected.append({"id": "", "code": "DG-4001", "error": f"change #{index} not object"})
            continue
        doc_id, revision, modified = raw.get("_id"), raw.get("_revision"), raw.get("_modified")
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > ID_MAX_LENGTH:
            rejected.append({"id": "", "code": "DG-4002", "error": "DG-4002 bad _id"})
            continue
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
            rejected.append({"id": doc_id, "code": "DG-4003", "error": "DG-4003 bad _revision"})
            continue
        if not isinstance(modified, int) or isinstance(modified, bool) or modified < 0:
            rejected.append({"id": doc_id, "code": "DG-4004", "error": "DG-4004 bad _modified"})
            continue
        origin = raw.get("_origin")
        body = {k: v for k, v in raw.items() if isinstance(k, str) and not k.startswith("_")}
        versions.append(
            Version(
                doc_id, WRITE, modified, revision, origin if isinstance(origin, str) else "", body
            )
        )
    tombstones = feed.get("tombstoneMap") or {}
    if isinstance(tombstones, Mapping):
        for doc_id, deleted_at in tombstones.items():
            if not isinstance(doc_id, str) or not doc_id or not _is_int(deleted_at):
                rejected.append(
                    {
                        "id": str(doc_id)[:ID_MAX_LENGTH],
                        "code": "DG-4007",
                        "error": "DG-4007 bad tombstone",
                    }
                )
                continue
            versions.append(Version(doc_id, DELETE, deleted_at, 0, "", None))
    return versions, rejected


def feed_of(changes: list[PendingChange]) -> tuple[dict[str, Any], dict[str, int]]:
    """The wire feed for journal entries, and the `sent` map (id -> change_no) to settle it."""
    change_set = [c.version.to_document() for c in changes if not c.version.deleted]
    tombstone_map = {c.version.doc_id: c.version.modified for c in changes if c.version.deleted}
    sent = {c.version.doc_id: c.change_no for c in changes}
    return {"changeSet": change_set, "tombstoneMap": tombstone_map}, sent


def receipt_of(versions: list[Version], rejected: list[dict[str, str]]) -> dict[str, Any]:
    """Our receipt for a chunk or feed we processed: every id, applied or superseded."""
    added = list(dict.fromkeys(v.doc_id for v in versions if not v.deleted))
    removed = list(dict.fromkeys(v.doc_id for v in versions if v.deleted))
    return {"added": added, "removed": removed, "rejected": rejected}


def is_restore(stored: Markers, server: Markers) -> bool:
    """The server went back in time (restored from an older backup) since we last synced."""
    if stored.is_zero:
        return False
    return (stored.epoch != 0 and stored.epoch != server.epoch) or stored.seq > server.seq


def needs_reset(stored: Markers, server: Markers, ack: Mapping[str, Any]) -> bool:
    """The server would answer these markers with a reset snapshot: it went back in time, or
    the markers are behind its purge horizon (connect.ack's `purgeMarker`)."""
    if stored.is_zero:
        return False
    purge = ack.get("purgeMarker")
    return is_restore(stored, server) or (isinstance(purge, int) and stored.seq < purge)


def ranges_granted(ack: Mapping[str, Any]) -> bool:
    return CAPABILITY_RANGES in (ack.get("capabilities") or [])


def retry_hint_ms(message: Mapping[str, Any]) -> int | None:
    """A Disconnect's `retryAfterMs`, when it is a usable number."""
    hint = message.get("retryAfterMs")
    if isinstance(hint, int) and not isinstance(hint, bool) and hint >= 0:
        return hint
    return None


@dataclass(frozen=True)
class Chunk:
    """What `next_chunk` made of some journal entries."""

    changes: list[PendingChange]
    rejected: list[tuple[PendingChange, str, str]]  # (change, code, error): cannot be sent
    after: int  # the last change_no looked at


def next_chunk(
    pending: list[PendingChange],
    *,
    after: int,
    most: int,
    budget: int,
    size_max: int,
    suspects: set[int],
) -> Chunk:
    """The next chunk from journal entries read after `after`: at most `size_max` changes,
    about `budget` bytes, never more than fits in one frame (`most`). A change too large for
    any frame is rejected (DG-4013); a suspect goes alone."""
    chunk: list[PendingChange] = []
    rejected: list[tuple[PendingChange, str, str]] = []
    size = 0
    for change in pending:
        try:
            body_size = encoded_size(change.version.body)
        except StoreError as exc:  # written before this check existed
            after = change.change_no
            rejected.append((change, "DG-4010", str(exc)))
            continue
        if body_size > most:
            after = change.change_no
            detail = (
                f"{DOCUMENT_TOO_LARGE} {change.version.doc_id!r} encodes to {body_size} "
                f"bytes; a change must fit in one frame: at most {most} bytes"
            )
            rejected.append((change, DOCUMENT_TOO_LARGE, detail))
            continue
        alone = change.change_no in suspects
        size += body_size + META_BYTES
        if chunk and (alone or size > budget or len(chunk) >= size_max):
            break
        after = change.change_no
        chunk.append(change)
        if alone:
            break
    return Chunk(chunk, rejected, after)


# --- effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send this message; the shell adds the header (`message_id` is its id)."""

    message_type: str
    body: dict[str, Any]
    message_id: str
    correlation_id: str | None = None


@dataclass(frozen=True)
class ReadJournal:
    """Read journal entries after `after` (at most `limit`); answer with `journal_read`."""

    after: int
    limit: int


@dataclass(frozen=True)
class Settle:
    """Settle a chunk or feed by the server's receipt; answer with `settle_done`."""

    sent: dict[str, int]
    receipt: dict[str, Any]


@dataclass(frozen=True)
class RejectPending:
    """Move this journal entry to the rejected changes with the code; answer with
    `reject_done` unless `quiet` (a live feed's, not part of a report)."""

    doc_id: str
    change_no: int
    code: str
    error: str
    quiet: bool = False


@dataclass(frozen=True)
class StoreSuspects:
    change_nos: frozenset[int]


@dataclass(frozen=True)
class StoreFrameLimit:
    limit: int


@dataclass(frozen=True)
class ApplyRemote:
    """Apply versions by the conflict rule (with markers: in the same transaction), then tell
    the application what changed."""

    versions: list[Version]
    markers: Markers | None = None


@dataclass(frozen=True)
class StoreMarkers:
    markers: Markers


@dataclass(frozen=True)
class ResetComplete:
    """End a reset snapshot (`Store.reset_complete`); answer with `reset_done`."""

    snapshot: dict[str, VersionKey]
    markers: Markers
    restore: bool


@dataclass(frozen=True)
class ReadHeld:
    """Read every held version's header; answer with `held_read`."""


@dataclass(frozen=True)
class RepairLocal:
    drop: list[str]
    push: list[str]


@dataclass(frozen=True)
class PushProgress:
    done: int
    total: int


@dataclass(frozen=True)
class PullProgress:
    done: int
    total: int


@dataclass(frozen=True)
class NoteLastSync:
    """The push and pull are done: note the time."""


@dataclass(frozen=True)
class GoLive:
    """The session is live: tell whoever waits for it."""


@dataclass(frozen=True)
class Close:
    """Close the websocket."""


@dataclass(frozen=True)
class End:
    """The session is over: cleanly (None) or with this error."""

    error: SyncError | None


Effect = (
    Send
    | ReadJournal
    | Settle
    | RejectPending
    | StoreSuspects
    | StoreFrameLimit
    | ApplyRemote
    | StoreMarkers
    | ResetComplete
    | ReadHeld
    | RepairLocal
    | PushProgress
    | PullProgress
    | NoteLastSync
    | GoLive
    | Close
    | End
)


# --- states and transitions -----------------------------------------------------------------


class State(enum.Enum):
    CONNECTING = "CONNECTING"  # Connect sent, waiting for connect.ack
    PUSHING = "PUSHING"  # sending the journal in chunks
    CHECKING = "CHECKING"  # range.check rounds
    FETCHING = "FETCHING"  # range.fetch of what differs
    ENDING = "ENDING"  # batch.end sent, waiting for batch.end.ack
    PULLING = "PULLING"  # the server's chunks
    FINISHING = "FINISHING"  # not live: waiting for the server's Disconnect
    LIVE = "LIVE"
    CLOSED = "CLOSED"


class Purpose(enum.Enum):
    SYNC = "SYNC"
    VERIFY = "VERIFY"  # range checks only
    REPAIR = "REPAIR"  # range checks; repair, push and pull when something differs


# (state, message type) -> handler. Any other pair ends the session (rule 7), but in LIVE.
TRANSITIONS: dict[tuple[State, str], str] = {
    (State.CONNECTING, CONNECT_ACK): "_on_connect_ack",
    (State.PUSHING, BATCH_ACK): "_on_batch_ack",
    (State.CHECKING, RANGE_RESULT): "_on_range_result",
    (State.FETCHING, RANGE_DOCS): "_on_range_docs",
    (State.ENDING, BATCH_END_ACK): "_on_batch_end_ack",
    (State.PULLING, BATCH_START): "_on_pull_chunk",
    (State.PULLING, BATCH_CONTINUE): "_on_pull_chunk",
    (State.PULLING, BATCH_END): "_on_pull_end",
    (State.FINISHING, DISCONNECT): "_on_goodbye",
    (State.LIVE, DISCONNECT): "_on_goodbye",
    (State.LIVE, FEED): "_on_feed",
    (State.LIVE, FEED_ACK): "_on_feed_ack",
}
# What each waiting state expects, for the error that names it.
EXPECTED = {
    State.CONNECTING: CONNECT_ACK,
    State.PUSHING: BATCH_ACK,
    State.CHECKING: RANGE_RESULT,
    State.FETCHING: RANGE_DOCS,
    State.ENDING: BATCH_END_ACK,
    State.PULLING: "a pull chunk",
}


@dataclass
class Config:
    """What the replica asked for; fixed for a session."""

    token: str
    name: str | None = None
    live: bool = False
    purpose: Purpose = Purpose.SYNC
    ranges: bool = True
    view: str | None = None
    pull_batch_size: int = 500
    push_chunk_size: int = 200
    push_chunk_bytes: int = 256 * 1024
    push_window: int = 4
    reply_timeout: float = 60.0


def _new_id() -> str:
    return str(uuid.uuid4())


class SyncMachine:
    """One session. `stored` and the rest are read from the store by the shell at its start."""

    def __init__(
        self,
        config: Config,
        *,
        stored: Markers,
        suspects: set[int],
        frame_limit: int,
        max_document_bytes: int,
        journal_total: int = 0,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.config = config
        self.state = State.CONNECTING
        self.report = SessionReport()
        self.error: SyncError | None = None  # how the session ended, once CLOSED
        self.retry_after_ms: int | None = None  # a live session's goodbye hint
        self.suspects = set(suspects)
        self._new_id = new_id
        self._stored = stored  # the markers as stored (updated as the machine stores them)
        self._frame_limit = frame_limit
        self._most = max_document_bytes
        self._journal_total = journal_total
        self._server = Markers()
        self._ack: Mapping[str, Any] = {}
        self._restore = False
        self._pull_from = stored
        # Frames sent and not answered yet: message id -> {doc id: change_no}.
        self.unacked: dict[str, dict[str, int]] = {}
        # push
        self._push_after = 0
        self._push_offset = 0
        self._push_exhausted = False
        self._push_acked = 0
        self._reading = False
        self._in_flight: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._repaired = False  # the range repair ran (then push again, pull from its markers)
        # pull
        self._snapshot: dict[str, VersionKey] | None = None
        self._estimate = 0
        # ranges
        self._index: LocalIndex | None = None
        self._pending_ranges: list[tuple[int, int]] = []
        self._range_answers = 0
        self._range_markers: Markers | None = None
        self._fetch_chunks: list[list[str]] = []
        self._fetch_in_flight = 0
        # live
        self._sent_upto = 0

    # -- the shell's questions -------------------------------------------------------------

    @property
    def timeout(self) -> float | None:
        """How long the shell waits for the next message (None: as long as it takes)."""
        if self.state == State.LIVE:
            return None
        if self.state == State.FINISHING:
            return FINISH_WAIT
        return self.config.reply_timeout

    @property
    def done(self) -> bool:
        return self.state == State.CLOSED

    # -- events ----------------------------------------------------------------------------

    def start(self) -> list[Effect]:
        capabilities = ["live"] if self.config.live and self.config.purpose == Purpose.SYNC else []
        if self.config.ranges or self.config.purpose != Purpose.SYNC:
            capabilities.append(CAPABILITY_RANGES)
        body: dict[str, Any] = {
            "authToken": self.config.token,
            "replicaName": self.config.name,
            "capabilities": capabilities,
        }
        if self.config.view is not None and self.config.purpose == Purpose.SYNC:
            capabilities.append(CAPABILITY_VIEWS)
            body["view"] = self.config.view
        return [self._send(CONNECT, body)]

    def receive(self, message: Mapping[str, Any]) -> list[Effect]:
        """A message from the server (not an error: those come as `failed`)."""
        if self.state == State.CLOSED:
            return []
        kind = message["header"]["messageType"]
        handler = TRANSITIONS.get((self.state, kind))
        if handler is not None:
            effects: list[Effect] = getattr(self, handler)(message)
            return effects
        if self.state == State.LIVE:
            log.warning("ignoring %s in the live phase", kind)
            return []
        if self.state == State.FINISHING:
            return []  # whatever comes before the Disconnect
        if kind == DISCONNECT:  # a draining server sends new sessions away at once
            return self._fail(
                SyncError(
                    "the server is going away (restart or deploy)",
                    retry_after_ms=retry_hint_ms(message),
                )
            )
        return self._fail(SyncError(f"expected {EXPECTED[self.state]}, the server sent {kind}"))

    def failed(self, error: SyncError) -> list[Effect]:
        """The link failed: a server error, a close, no answer in time."""
        if self.state == State.CLOSED:
            return []
        if self.state == State.FINISHING:
            return [Close(), *self._end(None)]
        if self.state == State.CHECKING and error.code == RANGES_UNAVAILABLE:
            # Key rules hide documents from us and the collection is too large for the
            # server to sum our view (DG-2030, not fatal): take the reset snapshot.
            log.info("range check unavailable, taking the reset snapshot: %s", error)
            return self._end_push()
        return self._fail(error)

    def wake(self) -> list[Effect]:
        """Local changes may be waiting (live): send them as feeds, if the window allows."""
        if self.state != State.LIVE or self._reading:
            return []
        if len(self._in_flight) >= (1 if self.suspects else LIVE_FEED_WINDOW):
            return []
        self._reading = True
        return [ReadJournal(self._sent_upto, self.config.push_chunk_size)]

    def stop(self) -> list[Effect]:
        """The application stops the session: say goodbye."""
        if self.state == State.CLOSED:
            return []
        return [self._send(DISCONNECT, {}), Close(), *self._end(None)]

    # -- answers to effects ----------------------------------------------------------------

    def journal_read(self, pending: list[PendingChange]) -> list[Effect]:
        """The journal entries a `ReadJournal` asked for."""
        self._reading = False
        if self.state == State.LIVE:
            return self._live_read(pending)
        if self.state != State.PUSHING:
            return []
        effects: list[Effect] = []
        if not pending:
            self._push_exhausted = True
            return effects + self._push_more()
        chunk = self._chunk(pending, self._push_after)
        effects += [
            RejectPending(c.version.doc_id, c.change_no, code, e) for c, code, e in chunk.rejected
        ]
        self._push_after = chunk.after
        if not chunk.changes:
            return effects + self._push_more()
        feed, sent = feed_of(chunk.changes)
        self._push_offset += len(chunk.changes)
        first = self._push_offset == len(chunk.changes)
        send = self._send(
            BATCH_START if first else BATCH_CONTINUE,
            {
                "feed": feed,
                "nextOffset": self._push_offset,
                "batchSize": len(chunk.changes),
                "startMarkers": None,
                "endMarkers": None,
            },
        )
        self._in_flight[send.message_id] = sent
        self.unacked[send.message_id] = sent
        return [*effects, send, *self._push_more()]

    def settle_done(self, settled: Settlement) -> list[Effect]:
        self.report.pushed += settled.dropped
        self.report.rejected += settled.rejected
        return []

    def reject_done(self, rejected: RejectedChange | None) -> list[Effect]:
        if rejected is not None:
            self.report.rejected.append(rejected)
        return []

    def reset_done(self, requeued: int) -> list[Effect]:
        self.report.requeued = requeued
        return []

    def held_read(self, held: list[tuple[str, int, int, bool]]) -> list[Effect]:
        """The held versions' headers a `ReadHeld` asked for: start the range check."""
        if self.state != State.CHECKING:
            return []
        self._index = LocalIndex(held)
        self._pending_ranges = [(0, BUCKETS)]
        return self._range_round()

    # -- connect ---------------------------------------------------------------------------

    def _on_connect_ack(self, ack: Mapping[str, Any]) -> list[Effect]:
        granted = ack.get("capabilities") or []
        if self.config.purpose == Purpose.SYNC:
            if self.config.view is not None and CAPABILITY_VIEWS not in granted:
                # An older server ignores `view`: it would send the whole collection.
                return self._fail(
                    SyncError(f"the server does not serve data views (view {self.config.view!r})")
                )
        elif CAPABILITY_RANGES not in granted:
            return self._fail(
                SyncError("the server does not offer range checks (capability 'ranges')")
            )
        self._ack = ack
        self.report.read_only = bool(ack.get("readOnly"))
        self._server = Markers.from_wire(ack.get("endMarkers"))
        self._restore = is_restore(self._stored, self._server)
        self._pull_from = self._stored
        if self.config.purpose != Purpose.SYNC:
            self.state = State.CHECKING
            return [ReadHeld()]
        return self._push_begin()

    # -- push ------------------------------------------------------------------------------

    def _push_begin(self) -> list[Effect]:
        self.state = State.PUSHING
        self._push_after = 0
        self._push_offset = 0
        self._push_exhausted = False
        self._push_acked = 0
        self._in_flight = OrderedDict()
        return self._push_more()

    def _push_more(self) -> list[Effect]:
        """Ask for more of the journal while the window allows, or move on when all is sent
        and acknowledged."""
        window = 1 if self.suspects else self.config.push_window
        if not self._push_exhausted and len(self._in_flight) < window:
            if self._reading:
                return []
            self._reading = True
            return [ReadJournal(self._push_after, self.config.push_chunk_size)]
        if self._in_flight or not self._push_exhausted:
            return []
        return self._push_finished()

    def _push_finished(self) -> list[Effect]:
        if self.config.purpose != Purpose.SYNC:
            # a verify that repairs: pull from the first range.result's markers if needed
            assert self._range_markers is not None
            if needs_reset(self._stored, self._server, self._ack):
                self._pull_from = self._range_markers
            self._restore = False
            return self._end_push()
        if self._repaired:
            assert self._range_markers is not None
            self._pull_from = self._range_markers
            self._restore = False
            return self._end_push()
        if needs_reset(self._stored, self._server, self._ack) and ranges_granted(self._ack):
            # Repair by difference instead of a reset snapshot, push what the repair journaled
            # again, then pull from the position the first range.result names
            # (docs/protocol.md, "Ranges"). After the push, so that a change the server
            # refused has left the journal, and goes like any other id the server lacks.
            self.state = State.CHECKING
            return [ReadHeld()]
        return self._end_push()

    def _on_batch_ack(self, reply: Mapping[str, Any]) -> list[Effect]:
        correlation = reply["header"].get("correlationId")
        if not self._in_flight or (correlation is not None and correlation not in self._in_flight):
            return self._fail(SyncError("a batch.ack answers no chunk in flight"))
        # Acks come in order; one without a correlationId answers the oldest chunk.
        if not correlation:
            correlation = next(iter(self._in_flight))
        sent = self._in_flight.pop(correlation)
        effects = self._settled(correlation)
        effects.append(Settle(sent, dict(reply.get("receipt") or {})))
        self._push_acked += len(sent)
        effects.append(PushProgress(self._push_acked, max(self._push_acked, self._journal_total)))
        return effects + self._push_more()

    def _settled(self, message_id: str | None) -> list[Effect]:
        """A frame was answered: its changes are no longer suspect."""
        frame = self.unacked.pop(message_id or "", None)
        if frame is not None and self.suspects & set(frame.values()):
            self.suspects.difference_update(frame.values())
            return [StoreSuspects(frozenset(self.suspects))]
        return []

    def _chunk(self, pending: list[PendingChange], after: int) -> Chunk:
        return next_chunk(
            pending,
            after=after,
            most=self._most,
            budget=min(self.config.push_chunk_bytes, self._most),
            size_max=self.config.push_chunk_size,
            suspects=self.suspects,
        )

    # -- range checks ----------------------------------------------------------------------

    def _range_round(self) -> list[Effect]:
        assert self._index is not None
        effects: list[Effect] = []
        pending, self._pending_ranges = self._pending_ranges, []
        for start in range(0, len(pending), RANGE_CHECK_MAX):
            if self.report.range_rounds >= RANGE_ROUNDS_MAX:
                return effects + self._fail(SyncError("the range check did not converge"))
            batch = pending[start : start + RANGE_CHECK_MAX]
            effects.append(
                self._send(RANGE_CHECK, {"ranges": [self._index.range_to_wire(*r) for r in batch]})
            )
            self.report.range_rounds += 1
            self._range_answers += 1
        return effects

    def _on_range_result(self, result: Mapping[str, Any]) -> list[Effect]:
        assert self._index is not None
        self._range_answers -= 1
        if self._range_markers is None:
            self._range_markers = Markers.from_wire(result.get("markers"))
        try:
            for answer in result.get("ranges") or []:
                lo, hi, status = int(answer["lo"]), int(answer["hi"]), answer.get("status")
                if status == "split":
                    self._pending_ranges += [
                        (p["lo"], p["hi"]) for p in answer["parts"] if self._index.differs(p)
                    ]
                elif status == "headers":
                    server = [Held.from_wire(raw) for raw in answer.get("headers") or []]
                    self.report.differences += compare(server, self._index.held(lo, hi))
                elif status == "later":
                    self._pending_ranges.append((lo, hi))
        except (KeyError, TypeError, ValueError) as exc:
            return self._fail(SyncError(f"the server sent a malformed range.result: {exc}"))
        if self._range_answers:
            return []
        if self._pending_ranges:
            return self._range_round()
        self.report.equal = not self.report.differences
        if self.config.purpose == Purpose.VERIFY or (
            self.config.purpose == Purpose.REPAIR and not self.report.differences
        ):
            return [self._send(DISCONNECT, {}), Close(), *self._end(None)]
        return self._fetch_begin()

    def _fetch_begin(self) -> list[Effect]:
        self.state = State.FETCHING
        ids = [d.doc_id for d in self.report.differences if d.kind in (MISSING, STALE)]
        self._fetch_chunks = [
            ids[i : i + RANGE_FETCH_MAX] for i in range(0, len(ids), RANGE_FETCH_MAX)
        ]
        self._fetch_in_flight = 0
        return self._fetch_more()

    def _fetch_more(self) -> list[Effect]:
        effects: list[Effect] = []
        while self._fetch_chunks and self._fetch_in_flight < RANGE_FETCH_WINDOW:
            effects.append(self._send(RANGE_FETCH, {"ids": self._fetch_chunks.pop(0)}))
            self._fetch_in_flight += 1
        if self._fetch_in_flight:
            return effects
        # Everything fetched: forget what the server does not hold (after a restore: journal
        # it to push again instead), journal what this replica holds newer; push again.
        differences = self.report.differences
        restore = self._restore
        push = [d.doc_id for d in differences if d.kind == NEWER or (d.kind == EXTRA and restore)]
        drop = [d.doc_id for d in differences if d.kind == EXTRA and not restore]
        self.report.repaired += len(differences)
        self._repaired = True
        return [*effects, RepairLocal(drop=drop, push=push), *self._push_begin()]

    def _on_range_docs(self, reply: Mapping[str, Any]) -> list[Effect]:
        self._fetch_in_flight -= 1
        versions, _ = parse_feed(reply.get("feed"))
        self.report.fetched += len(versions)
        return [ApplyRemote(versions), *self._fetch_more()]

    # -- pull ------------------------------------------------------------------------------

    def _end_push(self) -> list[Effect]:
        self.state = State.ENDING
        markers = self._pull_from.to_wire()
        return [
            self._send(
                BATCH_END,
                {
                    "startMarkers": markers,
                    "endMarkers": markers,
                    "batchSize": self.config.pull_batch_size,
                },
            )
        ]

    def _on_batch_end_ack(self, _: Mapping[str, Any]) -> list[Effect]:
        self.state = State.PULLING
        self._snapshot = None
        base = 0 if self._restore else self._pull_from.seq
        self._estimate = max(self._server.seq - base, 0)
        return []

    def _on_pull_chunk(self, message: Mapping[str, Any]) -> list[Effect]:
        if message.get("reset") and self._snapshot is None:
            self._snapshot = {}
        versions, rejected = parse_feed(message.get("feed"))
        if self._snapshot is not None:
            for version in versions:
                key = version.key()
                if version.doc_id not in self._snapshot or key > self._snapshot[version.doc_id]:
                    self._snapshot[version.doc_id] = key
        self.report.pulled += len(versions)
        ack = self._send(
            BATCH_ACK,
            {
                "receipt": receipt_of(versions, rejected),
                "nextOffset": message.get("nextOffset"),
                "batchSize": message.get("batchSize"),
                "startMarkers": message.get("startMarkers"),
                "endMarkers": message.get("endMarkers"),
            },
            correlation_id=message["header"].get("id"),
        )
        return [ApplyRemote(versions), ack, self._pull_progress()]

    def _on_pull_end(self, message: Mapping[str, Any]) -> list[Effect]:
        if message.get("reset") and self._snapshot is None:
            self._snapshot = {}
        end = Markers.from_wire(message.get("endMarkers"))
        effects: list[Effect] = []
        if self._snapshot is None:
            effects.append(StoreMarkers(end))
        else:
            self.report.reset = True
            self.report.restored = self._restore or is_restore(self._pull_from, end)
            effects.append(ResetComplete(self._snapshot, end, self.report.restored))
        self._stored = end
        self.report.markers = end
        effects.append(
            self._send(
                BATCH_END_ACK,
                {
                    "startMarkers": message.get("startMarkers"),
                    "endMarkers": message.get("endMarkers"),
                },
                correlation_id=message["header"].get("id"),
            )
        )
        effects += [self._pull_progress(), NoteLastSync()]
        if not (self.config.live and self.config.purpose == Purpose.SYNC):
            self.state = State.FINISHING
            return effects
        self.state = State.LIVE
        self._in_flight = OrderedDict()
        self._sent_upto = 0  # whatever the push phase left in the journal goes first
        return [*effects, GoLive(), *self.wake()]

    def _pull_progress(self) -> PullProgress:
        return PullProgress(self.report.pulled, max(self.report.pulled, self._estimate))

    # -- live ------------------------------------------------------------------------------

    def _live_read(self, pending: list[PendingChange]) -> list[Effect]:
        """Send new journal entries as a feed. `change_no` only grows, so everything up to the
        highest one sent is in flight or settled; an entry a receipt did not mention stays
        journaled for the next session."""
        if not pending:
            return []
        chunk = self._chunk(pending, self._sent_upto)
        effects: list[Effect] = [
            RejectPending(c.version.doc_id, c.change_no, code, e, quiet=True)
            for c, code, e in chunk.rejected
        ]
        self._sent_upto = chunk.after
        if chunk.changes:
            feed, sent = feed_of(chunk.changes)
            send = self._send(FEED, {"feed": feed})
            self._in_flight[send.message_id] = sent
            self.unacked[send.message_id] = sent
            effects.append(send)
        return effects + self.wake()

    def _on_feed_ack(self, message: Mapping[str, Any]) -> list[Effect]:
        correlation = message["header"].get("correlationId")
        effects = self._settled(correlation)
        sent = self._in_flight.pop(correlation or "", None)
        if sent is not None:
            effects.append(Settle(sent, dict(message.get("receipt") or {})))
        return effects + self.wake()

    def _on_feed(self, message: Mapping[str, Any]) -> list[Effect]:
        start = Markers.from_wire(message.get("startMarkers"))
        end = Markers.from_wire(message.get("endMarkers"))
        stored = self._stored
        if end.epoch != stored.epoch or start.seq > stored.seq:
            return self._fail(
                GapError(f"feed covers {start.seq}..{end.seq} but this replica is at {stored.seq}")
            )
        versions, rejected = parse_feed(message.get("feed"))
        markers = end if end.seq > stored.seq else None
        if markers is not None:
            self._stored = markers
        self.report.pulled += len(versions)
        ack = self._send(
            FEED_ACK,
            {"receipt": receipt_of(versions, rejected)},
            correlation_id=message["header"].get("id"),
        )
        return [ApplyRemote(versions, markers=markers), ack, *self.wake()]

    def _on_goodbye(self, message: Mapping[str, Any]) -> list[Effect]:
        hint = retry_hint_ms(message)
        if hint is not None and self.state == State.LIVE:
            self.retry_after_ms = min(hint, MAX_RETRY_HINT_MS)
        return [Close(), *self._end(None)]

    # -- the end ---------------------------------------------------------------------------

    def _fail(self, error: SyncError) -> list[Effect]:
        effects = self._after_fault(error) if self.config.purpose == Purpose.SYNC else []
        return [*effects, *self._end(error)]

    def _after_fault(self, error: SyncError) -> list[Effect]:
        """After the server ended a session over a frame we sent, make sure the next session
        does not send the same frame again (rule 8)."""
        if not frame_fault(error):
            return []
        effects: list[Effect] = []
        if error.code == FRAME_TOO_LARGE or error.close_code == CLOSE_FRAME_TOO_LARGE:
            found = LIMIT_IN_TEXT.search(str(error))
            if found is not None and int(found.group(1)) < self._frame_limit:
                self._frame_limit = int(found.group(1))
                effects.append(StoreFrameLimit(self._frame_limit))
        frames = list(self.unacked.values())
        self.unacked = {}
        if len(frames) == 1 and len(frames[0]) == 1:
            # One frame in flight, one change in it: the server refused that change.
            doc_id, change_no = next(iter(frames[0].items()))
            effects.append(
                RejectPending(doc_id, change_no, error.code or FRAME_TOO_LARGE, str(error))
            )
            self.suspects.discard(change_no)
        else:
            for sent in frames:
                self.suspects.update(sent.values())
        effects.append(StoreSuspects(frozenset(self.suspects)))
        return effects

    def _end(self, error: SyncError | None) -> list[Effect]:
        self.state = State.CLOSED
        self.error = error
        return [End(error)]

    def _send(
        self, message_type: str, body: dict[str, Any], *, correlation_id: str | None = None
    ) -> Send:
        return Send(message_type, body, self._new_id(), correlation_id)
