"""The sync engine: one replica's conversation with a DataGate server (PROTOCOL.md section 4).

A session runs: Connect → push the journal in chunks (batch.start / batch.continue, each
answered by a batch.ack whose receipt settles the journal) → batch.end with the stored markers
→ pull (apply each chunk by the conflict rule, ack it) → store the pull's endMarkers → then,
for a live session, feeds in both directions until either side disconnects.

What makes it safe to stop anywhere (a crash, a killed server, a lost network):
- a local change leaves the journal only when a receipt lists it, so an unacknowledged change is
  sent again by the next session (the server applies a change idempotently);
- markers are stored only at the end of a pull, or with the feed they came with, in the same
  transaction as the changes, so a session cut short pulls again from where it was;
- a pull whose first chunk says `reset` is a full snapshot: ids it lacks and the journal does
  not hold are dropped; if the server went back in time (its epoch changed, or its position is
  behind ours) what we hold that the snapshot lacks or has older is journaled and pushed again;
- a live feed whose marker range does not start where we are is a gap: the session ends and
  the next one resumes from the stored markers;
- a change the server cannot take never blocks the rest of the journal: one too large for a
  frame is refused at `put` or, already journaled, rejected here with DG-4013; when the server
  closes the session over a frame (DG-2007, a bad change it could not read), the changes of
  the frames in flight become suspects, sent one per frame with one frame in flight, and a
  suspect the server refuses alone is rejected with the server's code. Rejected changes are
  kept with their code (`Store.rejected`, `status`), so a live replica does not reconnect
  in a loop.

`SyncEngine.run()` keeps a live session up, reconnecting with exponential back-off and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

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
    Change,
    Markers,
    PendingChange,
    RejectedChange,
    Store,
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


def frame_fault(error: SyncError) -> bool:
    """Whether the server ended the session over the content of a frame we sent."""
    return (
        error.close_code == CLOSE_FRAME_TOO_LARGE
        or error.code in FRAME_FAULTS
        or error.code.startswith("DG-4")
    )


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


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential back-off with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return rng.uniform(ceiling / 2, ceiling)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_url(url: str) -> str:
    """The server URL, or ValueError with a one-line reason (`ws://host:port`, `https://...`)."""
    parts = urlsplit(url)
    if "://" not in url or parts.scheme not in ("ws", "wss", "http", "https"):
        hint = url.split("://", 1)[-1]
        raise ValueError(f"{url!r} needs a scheme: ws://{hint} (or wss://, http://, https://)")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host name")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535") from None
    return url


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


class _Session:
    """One websocket conversation: headers, sending, receiving with errors turned into raises."""

    def __init__(self, ws: ClientConnection, *, tenant: str, collection: str, origin: str):
        self.ws = ws
        self.tenant = tenant
        self.collection = collection
        self.origin = origin
        self.transaction_id = str(uuid.uuid4())
        self.user_name: str | None = None
        self.last_size = 0  # bytes of the last frame sent

    async def send(
        self, message_type: str, *, correlation_id: str | None = None, **body: Any
    ) -> str:
        message_id = str(uuid.uuid4())
        header = {
            "id": message_id,
            "transactionId": self.transaction_id,
            "correlationId": correlation_id,
            "tenant": self.tenant,
            "collection": self.collection,
            "userName": self.user_name,
            "timestamp": time.time_ns() // 1_000_000,
            "messageType": message_type,
            "origin": self.origin,
        }
        # UTF-8 as the server measures it (not \u escapes, which can take six bytes a letter).
        text = json.dumps({"header": header, **body}, ensure_ascii=False, separators=(",", ":"))
        self.last_size = len(text.encode("utf-8"))
        await self.ws.send(text)
        return message_id

    async def receive(self, seconds: float | None) -> dict[str, Any]:
        """The next message; a server error raises SyncError (the session is over)."""
        try:
            async with asyncio.timeout(seconds):
                frame = await self.ws.recv()
        except TimeoutError as exc:
            raise SyncError(f"no answer from the server within {seconds} s") from exc
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        try:
            message = json.loads(frame)
            header = message["header"]
            message_type = header["messageType"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SyncError(f"the server sent a malformed frame: {exc}") from exc
        if message_type == ERROR:
            code, text = str(message.get("code") or ""), str(message.get("error") or "")
            close = None
            if message.get("fatal"):
                with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                    async with asyncio.timeout(2):
                        await self.ws.wait_closed()
                close = self.ws.close_code
            error_type = AuthenticationError if close == CLOSE_NOT_AUTHENTICATED else SyncError
            raise error_type(text or f"server error {code}", code=code, close_code=close)
        return dict(message)

    async def expect(self, message_type: str, seconds: float | None) -> dict[str, Any]:
        message = await self.receive(seconds)
        kind = message["header"]["messageType"]
        if kind == DISCONNECT:  # a draining server sends new sessions away at once
            hint = message.get("retryAfterMs")
            valid = isinstance(hint, int) and not isinstance(hint, bool) and hint >= 0
            raise SyncError(
                "the server is going away (restart or deploy)",
                retry_after_ms=hint if valid else None,
            )
        if kind != message_type:
            raise SyncError(f"expected {message_type}, the server sent {kind}")
        return message


# What a close code means, in words (docs/protocol.md section 1).
CLOSE_MEANINGS = {
    1000: "closed normally",
    1001: "the server is going away (restart or deploy)",
    1006: "the connection dropped without a close frame",
    1009: "a frame was too large",
    1011: "the server hit an internal error",
    4400: "the server could not read a frame",
    4401: "the token was refused",
    4403: "not allowed",
    4408: "Connect was not sent in time",
    4409: "protocol violation",
    4429: "this replica acknowledged feeds too slowly",
    4500: "the server hit an internal error",
}


def describe_close(code: int | None, reason: str = "") -> str:
    """A close in words: `connection closed: the token was refused (close 4401, DG-1001)`."""
    if code is None:
        return "connection dropped without a close frame (network error or server killed)"
    words = CLOSE_MEANINGS.get(code, "closed")
    dg = next((part for part in reason.split() if part.startswith("DG-")), "")
    detail = f"close {code}" + (f", {dg}" if dg else "")
    rest = reason.replace(dg, "").strip(" :-") if dg else reason.strip()
    return f"connection closed: {words} ({detail})" + (f": {rest}" if rest else "")


def _closed_error(exc: ConnectionClosed) -> SyncError:
    code = exc.rcvd.code if exc.rcvd is not None else None
    reason = exc.rcvd.reason if exc.rcvd is not None else ""
    error_type = AuthenticationError if code == CLOSE_NOT_AUTHENTICATED else SyncError
    return error_type(describe_close(code, reason), close_code=code)


ChangeListener = Callable[[list[Change]], None]
ProgressListener = Callable[[int, int], None]
RetryListener = Callable[[SyncError, float], None]


class SyncEngine:
    """Syncs one Store with one collection of a DataGate server."""

    def __init__(
        self,
        *,
        store: Store,
        url: str,
        tenant: str,
        collection: str,
        token: str,
        name: str | None = None,
        pull_batch_size: int = 500,
        push_chunk_size: int = 200,
        push_chunk_bytes: int = 256 * 1024,
        push_window: int = 4,
        reply_timeout: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        on_changes: ChangeListener | None = None,
        on_progress: ProgressListener | None = None,
        on_push_progress: ProgressListener | None = None,
        on_retry: RetryListener | None = None,
        rng: random.Random | None = None,
        max_frame_bytes: int | None = None,
        ranges: bool = True,
        view: str | None = None,
    ) -> None:
        self.store = store
        self.view = view  # sync only this data view of the collection
        self.ranges = ranges  # repair a reset by range checks when the server offers them
        if max_frame_bytes is not None:  # the server's DATAGATE_MAX_FRAME_BYTES, if not 1 MiB
            store.frame_limit_store(max_frame_bytes)
        self.url = url.rstrip("/")
        self.tenant = tenant
        self.collection = collection
        self.token = token
        self.name = name
        self.pull_batch_size = pull_batch_size
        self.push_chunk_size = push_chunk_size
        self.push_chunk_bytes = push_chunk_bytes
        self.push_window = push_window
        self.reply_timeout = reply_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_changes = on_changes
        self.on_progress = on_progress
        self.on_push_progress = on_push_progress
        self.on_retry = on_retry  # (error, seconds until the next attempt) after a failure
        # A stopping server's Disconnect says when to come back (retryAfterMs), so that its
        # replicas reconnect spread over a few seconds; the next attempt waits that long.
        self.retry_hint: float | None = None
        self.next_attempt_delay: float | None = None  # seconds; for status and tests
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.live = False  # True while a live session is up
        self.went_live = False  # the last session reached the live phase
        self._sent_upto = 0
        self.last_error: SyncError | None = None
        self._wake = asyncio.Event()
        self._live_event = asyncio.Event()
        # Frames sent and not answered yet: message id -> (bytes, {doc id: change_no}).
        self._unacked: dict[str, tuple[int, dict[str, int]]] = {}
        self._suspects: set[int] = store.suspects()

    @property
    def endpoint(self) -> str:
        base = self.url
        if base.startswith("http"):
            base = "ws" + base[4:]
        return f"{base}/ws/datagate/{quote(self.tenant)}/{quote(self.collection)}/"

    def poke(self) -> None:
        """A local change was made: a live session sends it now rather than at the next poll."""
        self._wake.set()

    async def wait_live(self, timeout: float | None) -> None:  # noqa: ASYNC109 - public API
        async with asyncio.timeout(timeout):
            await self._live_event.wait()

    # -- a session --------------------------------------------------------------------------

    async def session(self, *, live: bool, stop: asyncio.Event | None = None) -> SessionReport:
        """Connect, push, pull; with `live`, stay live until `stop` is set or the link drops."""
        report = SessionReport()
        self._unacked = {}
        try:
            async with connect(
                self.endpoint,
                open_timeout=self.reply_timeout,
                max_size=None,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=5,
            ) as ws:
                conn = _Session(
                    ws, tenant=self.tenant, collection=self.collection, origin=self.store.replica_id
                )
                await self._run_session(conn, report, live=live, stop=stop)
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise SyncError(f"cannot connect to {self.endpoint}: {exc}") from exc
        except ConnectionClosed as exc:
            error = _closed_error(exc)
            self._after_fault(error, report)
            raise error from exc
        except SyncError as exc:
            self._after_fault(exc, report)
            raise
        finally:
            self.live = False
            self._live_event.clear()
        return report

    def _after_fault(self, error: SyncError, report: SessionReport) -> None:
        """After the server ended a session over a frame we sent, make sure the next session
        does not send the same frame again (the module docstring)."""
        if not frame_fault(error):
            return
        if error.code == FRAME_TOO_LARGE or error.close_code == CLOSE_FRAME_TOO_LARGE:
            found = LIMIT_IN_TEXT.search(str(error))
            if found is not None and int(found.group(1)) < self.store.frame_limit():
                self.store.frame_limit_store(int(found.group(1)))
        frames = list(self._unacked.values())
        self._unacked = {}
        if len(frames) == 1 and len(frames[0][1]) == 1:
            # One frame in flight, one change in it: the server refused that change.
            doc_id, change_no = next(iter(frames[0][1].items()))
            code = error.code or FRAME_TOO_LARGE
            rejected = self.store.reject_pending(
                doc_id, change_no, code=code, error=str(error), at_ms=_now_ms()
            )
            if rejected is not None:
                report.rejected.append(rejected)
                log.warning("the server refused %r on its own: %s", doc_id, error)
            self._suspects.discard(change_no)
        else:
            for _, sent in frames:
                self._suspects.update(sent.values())
        self.store.suspects_store(self._suspects)

    def _settled(self, message_id: str | None) -> None:
        """A frame was answered: its changes are no longer suspect."""
        frame = self._unacked.pop(message_id or "", None)
        if frame is not None and self._suspects & set(frame[1].values()):
            self._suspects.difference_update(frame[1].values())
            self.store.suspects_store(self._suspects)

    async def _run_session(
        self, conn: _Session, report: SessionReport, *, live: bool, stop: asyncio.Event | None
    ) -> None:
        capabilities = ["live"] if live else []
        if self.ranges:
            capabilities.append(CAPABILITY_RANGES)
        extra: dict[str, Any] = {}
        if self.view is not None:
            capabilities.append(CAPABILITY_VIEWS)
            extra["view"] = self.view
        await conn.send(
            CONNECT,
            authToken=self.token,
            replicaName=self.name,
            capabilities=capabilities,
            **extra,
        )
        ack = await conn.expect(CONNECT_ACK, self.reply_timeout)
        if self.view is not None and CAPABILITY_VIEWS not in (ack.get("capabilities") or []):
            # An older server ignores `view`: it would send the whole collection.
            raise SyncError(f"the server does not serve data views (view {self.view!r})")
        conn.user_name = ack["header"].get("userName")
        report.read_only = bool(ack.get("readOnly"))
        server_position = Markers.from_wire(ack.get("endMarkers"))
        stored = self.store.markers()
        restore = is_restore(stored, server_position)

        await self._push(conn, report)
        if needs_reset(stored, server_position, ack) and ranges_granted(ack):
            # Repair by difference instead of a reset snapshot, push what the repair journaled
            # again, then pull from the position the first range.result names
            # (docs/protocol.md, "Ranges"). After the push, so that a change the server
            # refused has left the journal, and goes like any other id the server lacks.
            try:
                stored = await self._range_repair(conn, report, restore=restore)
            except SyncError as exc:
                if exc.code != RANGES_UNAVAILABLE:
                    raise
                # Key rules hide documents from us and the collection is too large for the
                # server to sum our view (DG-2030, not fatal): take the reset snapshot.
                log.info("range check unavailable, taking the reset snapshot: %s", exc)
            else:
                await self._push(conn, report)
                restore = False
        await conn.send(
            BATCH_END,
            startMarkers=stored.to_wire(),
            endMarkers=stored.to_wire(),
            batchSize=self.pull_batch_size,
        )
        await conn.expect(BATCH_END_ACK, self.reply_timeout)
        await self._pull(conn, report, stored=stored, server=server_position, restore=restore)
        self.store.note("last_sync", time.time_ns() // 1_000_000)
        if not live:
            await self._finish(conn)
            return
        self.live = True
        self.went_live = True
        self._live_event.set()
        self.last_error = None
        await self._live(conn, report, stop=stop)

    async def _finish(self, conn: _Session) -> None:
        """Non-live: the server sends Disconnect after the pull; wait briefly, then close."""
        with contextlib.suppress(SyncError):
            while True:
                message = await conn.receive(5.0)
                if message["header"]["messageType"] == DISCONNECT:
                    break
        await conn.ws.close()

    # -- push -------------------------------------------------------------------------------

    def _next_chunk(self, after: int, report: SessionReport) -> list[PendingChange]:
        """The next journal entries to send: at most push_chunk_size, about push_chunk_bytes,
        and never more than fits in one frame of the server. A change too large for any frame
        is rejected here (DG-4013); a suspect goes alone."""
        most = self.store.max_document_bytes()
        budget = min(self.push_chunk_bytes, most)
        chunk: list[PendingChange] = []
        size = 0
        while not chunk:
            pending = self.store.journal(limit=self.push_chunk_size, after=after)
            if not pending:
                return chunk
            for change in pending:
                after = change.change_no
                try:
                    body_size = encoded_size(change.version.body)
                except StoreError as exc:  # written before this check existed
                    self._reject_local(change, "DG-4010", str(exc), report)
                    continue
                if body_size > most:
                    detail = (
                        f"{DOCUMENT_TOO_LARGE} {change.version.doc_id!r} encodes to {body_size} "
                        f"bytes; a change must fit in one frame: at most {most} bytes"
                    )
                    self._reject_local(change, DOCUMENT_TOO_LARGE, detail, report)
                    continue
                alone = change.change_no in self._suspects
                size += body_size + META_BYTES
                if chunk and (alone or size > budget or len(chunk) >= self.push_chunk_size):
                    return chunk
                chunk.append(change)
                if alone:
                    return chunk
        return chunk

    def _reject_local(
        self, change: PendingChange, code: str, error: str, report: SessionReport
    ) -> None:
        rejected = self.store.reject_pending(
            change.version.doc_id, change.change_no, code=code, error=error, at_ms=_now_ms()
        )
        if rejected is not None:
            report.rejected.append(rejected)
            log.warning("%s", error)

    async def _push(self, conn: _Session, report: SessionReport) -> None:
        """Send the journal in chunks, up to `push_window` ahead of their batch.acks."""
        in_flight: OrderedDict[str, dict[str, int]] = OrderedDict()  # chunk id -> sent
        total = self.store.count()["journal"] if self.on_push_progress is not None else 0
        acked = 0
        after = 0
        offset = 0
        exhausted = False
        while True:
            # With suspects, one frame in flight: a refusal then names its frame.
            window = 1 if self._suspects else self.push_window
            while not exhausted and len(in_flight) < window:
                chunk = self._next_chunk(after, report)
                if not chunk:
                    exhausted = True
                    break
                feed, sent = feed_of(chunk)
                offset += len(chunk)
                message_id = await conn.send(
                    BATCH_CONTINUE if offset > len(chunk) else BATCH_START,
                    feed=feed,
                    nextOffset=offset,
                    batchSize=len(chunk),
                    startMarkers=None,
                    endMarkers=None,
                )
                in_flight[message_id] = sent
                self._unacked[message_id] = (conn.last_size, sent)
                after = chunk[-1].change_no
            if not in_flight:
                return
            reply = await conn.expect(BATCH_ACK, self.reply_timeout)
            correlation = reply["header"].get("correlationId")
            if correlation is not None and correlation not in in_flight:
                raise SyncError("a batch.ack answers no chunk in flight")
            # Acks come in order; one without a correlationId answers the oldest chunk.
            if not correlation:
                correlation = next(iter(in_flight))
            sent = in_flight.pop(correlation)
            self._settled(correlation)
            settled = self.store.settle(
                sent, reply.get("receipt") or {}, at_ms=time.time_ns() // 1_000_000
            )
            report.pushed += settled.dropped
            report.rejected += settled.rejected
            if self.on_push_progress is not None:
                acked += len(sent)
                self.on_push_progress(acked, max(acked, total))

    # -- pull -------------------------------------------------------------------------------

    async def _pull(
        self,
        conn: _Session,
        report: SessionReport,
        *,
        stored: Markers,
        server: Markers,
        restore: bool,
    ) -> None:
        snapshot: dict[str, VersionKey] | None = None
        estimate = max(server.seq - (0 if restore else stored.seq), 0)
        while True:
            message = await conn.receive(self.reply_timeout)
            kind = message["header"]["messageType"]
            if kind == BATCH_END:
                if message.get("reset") and snapshot is None:
                    snapshot = {}
                end = Markers.from_wire(message.get("endMarkers"))
                changes: list[Change] = []
                if snapshot is None:
                    self.store.markers_store(end)
                else:
                    report.reset = True
                    report.restored = restore or is_restore(stored, end)
                    changes, report.requeued = self.store.reset_complete(
                        snapshot=snapshot, markers=end, restore=report.restored
                    )
                report.markers = end
                self._notify(changes)
                await conn.send(
                    BATCH_END_ACK,
                    correlation_id=message["header"].get("id"),
                    startMarkers=message.get("startMarkers"),
                    endMarkers=message.get("endMarkers"),
                )
                if self.on_progress is not None:
                    self.on_progress(report.pulled, max(report.pulled, estimate))
                return
            if kind not in (BATCH_START, BATCH_CONTINUE):
                raise SyncError(f"expected a pull chunk, the server sent {kind}")
            if message.get("reset") and snapshot is None:
                snapshot = {}
            versions, rejected = parse_feed(message.get("feed"))
            changes = self.store.apply_remote(versions)
            if snapshot is not None:
                for version in versions:
                    key = version.key()
                    if version.doc_id not in snapshot or key > snapshot[version.doc_id]:
                        snapshot[version.doc_id] = key
            report.pulled += len(versions)
            self._notify(changes)
            await conn.send(
                BATCH_ACK,
                correlation_id=message["header"].get("id"),
                receipt=receipt_of(versions, rejected),
                nextOffset=message.get("nextOffset"),
                batchSize=message.get("batchSize"),
                startMarkers=message.get("startMarkers"),
                endMarkers=message.get("endMarkers"),
            )
            if self.on_progress is not None:
                self.on_progress(report.pulled, max(report.pulled, estimate))

    # -- range checks -----------------------------------------------------------------------

    async def _range_check(
        self, conn: _Session, report: SessionReport, index: LocalIndex
    ) -> Markers:
        """Compare this replica with the server range by range; the differences go into
        `report.differences`. Returns the markers of the first range.result: the server's
        position before it read its summaries."""
        pending: list[tuple[int, int]] = [(0, BUCKETS)]
        markers: Markers | None = None
        while pending:
            sent = 0
            for start in range(0, len(pending), RANGE_CHECK_MAX):
                if report.range_rounds >= RANGE_ROUNDS_MAX:
                    raise SyncError("the range check did not converge")
                batch = pending[start : start + RANGE_CHECK_MAX]
                await conn.send(RANGE_CHECK, ranges=[index.range_to_wire(*r) for r in batch])
                report.range_rounds += 1
                sent += 1
            pending = []
            for _ in range(sent):
                result = await conn.expect(RANGE_RESULT, self.reply_timeout)
                if markers is None:
                    markers = Markers.from_wire(result.get("markers"))
                pending += self._range_result(result, index, report)
        assert markers is not None
        report.equal = not report.differences
        return markers

    @staticmethod
    def _range_result(
        result: Mapping[str, Any], index: LocalIndex, report: SessionReport
    ) -> list[tuple[int, int]]:
        again: list[tuple[int, int]] = []
        try:
            for answer in result.get("ranges") or []:
                lo, hi, status = int(answer["lo"]), int(answer["hi"]), answer.get("status")
                if status == "split":
                    again += [(p["lo"], p["hi"]) for p in answer["parts"] if index.differs(p)]
                elif status == "headers":
                    server = [Held.from_wire(raw) for raw in answer.get("headers") or []]
                    report.differences += compare(server, index.held(lo, hi))
                elif status == "later":
                    again.append((lo, hi))
        except (KeyError, TypeError, ValueError) as exc:
            raise SyncError(f"the server sent a malformed range.result: {exc}") from exc
        return again

    async def _range_repair(
        self, conn: _Session, report: SessionReport, *, restore: bool
    ) -> Markers:
        """Find the differences and repair them: fetch what the server holds newer or this
        replica lacks, forget what the server does not hold (after a restore: journal it to
        push again instead), journal what this replica holds newer. Returns the markers to
        pull from."""
        index = LocalIndex(self.store.held_versions())
        markers = await self._range_check(conn, report, index)
        await self._apply_differences(conn, report, restore=restore)
        return markers

    async def _apply_differences(
        self, conn: _Session, report: SessionReport, *, restore: bool
    ) -> None:
        differences = report.differences
        await self._fetch(
            conn, report, [d.doc_id for d in differences if d.kind in (MISSING, STALE)]
        )
        push = [d.doc_id for d in differences if d.kind == NEWER or (d.kind == EXTRA and restore)]
        drop = [d.doc_id for d in differences if d.kind == EXTRA and not restore]
        self._notify(self.store.repair_local(drop=drop, push=push))
        report.repaired += len(differences)

    async def _fetch(self, conn: _Session, report: SessionReport, ids: list[str]) -> None:
        """Fetch the server's versions of `ids`, a few range.fetch messages in flight."""
        chunks = [ids[i : i + RANGE_FETCH_MAX] for i in range(0, len(ids), RANGE_FETCH_MAX)]
        in_flight = 0
        while chunks or in_flight:
            while chunks and in_flight < RANGE_FETCH_WINDOW:
                await conn.send(RANGE_FETCH, ids=chunks.pop(0))
                in_flight += 1
            reply = await conn.expect(RANGE_DOCS, self.reply_timeout)
            in_flight -= 1
            versions, _ = parse_feed(reply.get("feed"))
            self._notify(self.store.apply_remote(versions))
            report.fetched += len(versions)

    async def verify(self, *, repair: bool = False) -> SessionReport:
        """Prove this replica holds what the server holds, by range checks; with `repair`,
        repair the differences (then push and pull as a sync does). `report.equal` says
        whether there was no difference; `report.differences` lists them."""
        report = SessionReport()
        try:
            async with connect(
                self.endpoint, open_timeout=self.reply_timeout, max_size=None, close_timeout=5
            ) as ws:
                conn = _Session(
                    ws, tenant=self.tenant, collection=self.collection, origin=self.store.replica_id
                )
                await self._verify_session(conn, report, repair=repair)
        except (OSError, InvalidHandshake) as exc:
            raise SyncError(f"cannot connect to {self.endpoint}: {exc}") from exc
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        if repair and report.differences:
            again = await self.verify(repair=False)
            report.equal = again.equal
            report.range_rounds += again.range_rounds
        return report

    async def _verify_session(self, conn: _Session, report: SessionReport, *, repair: bool):
        await conn.send(
            CONNECT,
            authToken=self.token,
            replicaName=self.name,
            capabilities=[CAPABILITY_RANGES],
        )
        ack = await conn.expect(CONNECT_ACK, self.reply_timeout)
        conn.user_name = ack["header"].get("userName")
        if not ranges_granted(ack):
            raise SyncError("the server does not offer range checks (capability 'ranges')")
        report.read_only = bool(ack.get("readOnly"))
        server = Markers.from_wire(ack.get("endMarkers"))
        stored = self.store.markers()
        index = LocalIndex(self.store.held_versions())
        markers = await self._range_check(conn, report, index)
        if not repair or not report.differences:
            with contextlib.suppress(ConnectionClosed):
                await conn.send(DISCONNECT)
            await conn.ws.close()
            return
        restore = is_restore(stored, server)
        await self._apply_differences(conn, report, restore=restore)
        start = markers if needs_reset(stored, server, ack) else stored
        await self._push(conn, report)
        await conn.send(
            BATCH_END,
            startMarkers=start.to_wire(),
            endMarkers=start.to_wire(),
            batchSize=self.pull_batch_size,
        )
        await conn.expect(BATCH_END_ACK, self.reply_timeout)
        await self._pull(conn, report, stored=start, server=server, restore=False)
        await self._finish(conn)

    # -- live -------------------------------------------------------------------------------

    async def _live(self, conn: _Session, report: SessionReport, *, stop: asyncio.Event | None):
        inflight: dict[str, dict[str, int]] = {}  # feed id -> {doc id: change_no}
        self._sent_upto = 0  # whatever the push phase left in the journal goes first
        stop = stop or asyncio.Event()
        reader = asyncio.ensure_future(conn.receive(None))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                await self._send_feeds(conn, inflight)
                self._wake.clear()
                waker = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait(
                    {reader, stopper, waker}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                waker.cancel()
                if stopper in done:
                    with contextlib.suppress(ConnectionClosed):
                        await conn.send(DISCONNECT)
                    await conn.ws.close()
                    return
                if reader in done:
                    message = reader.result()  # raises on a server error or a closed link
                    reader = asyncio.ensure_future(conn.receive(None))
                    if await self._on_live_message(conn, message, inflight, report):
                        return
        finally:
            for task in (reader, stopper):
                task.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _send_feeds(self, conn: _Session, inflight: dict[str, dict[str, int]]) -> None:
        """Send new journal entries as feeds, a few feeds in flight at most.

        `change_no` only grows, so everything up to the highest one sent is in flight or
        settled; an entry a receipt did not mention stays journaled for the next session.
        """
        while len(inflight) < (1 if self._suspects else 4):
            chunk = self._next_chunk(self._sent_upto, SessionReport())
            if not chunk:
                return
            feed, sent = feed_of(chunk)
            message_id = await conn.send(FEED, feed=feed)
            inflight[message_id] = sent
            self._unacked[message_id] = (conn.last_size, sent)
            self._sent_upto = chunk[-1].change_no

    async def _on_live_message(
        self,
        conn: _Session,
        message: dict[str, Any],
        inflight: dict[str, dict[str, int]],
        report: SessionReport,
    ) -> bool:
        """Handle one message of the live phase; True when the session is over."""
        header = message["header"]
        kind = header["messageType"]
        if kind == DISCONNECT:
            hint = message.get("retryAfterMs")
            if isinstance(hint, int) and not isinstance(hint, bool) and hint >= 0:
                self.retry_hint = min(hint, MAX_RETRY_HINT_MS) / 1000
            await conn.ws.close()
            return True
        if kind == FEED_ACK:
            self._settled(header.get("correlationId"))
            sent = inflight.pop(header.get("correlationId") or "", None)
            if sent is not None:
                settled = self.store.settle(
                    sent, message.get("receipt") or {}, at_ms=time.time_ns() // 1_000_000
                )
                report.pushed += settled.dropped
                report.rejected += settled.rejected
            return False
        if kind == FEED:
            stored = self.store.markers()
            start = Markers.from_wire(message.get("startMarkers"))
            end = Markers.from_wire(message.get("endMarkers"))
            if end.epoch != stored.epoch or start.seq > stored.seq:
                raise GapError(
                    f"feed covers {start.seq}..{end.seq} but this replica is at {stored.seq}"
                )
            versions, rejected = parse_feed(message.get("feed"))
            markers = end if end.seq > stored.seq else None
            changes = self.store.apply_remote(versions, markers=markers)
            report.pulled += len(versions)
            self._notify(changes)
            await conn.send(
                FEED_ACK, correlation_id=header.get("id"), receipt=receipt_of(versions, rejected)
            )
            return False
        log.warning("ignoring %s in the live phase", kind)
        return False

    def _notify(self, changes: list[Change]) -> None:
        if changes and self.on_changes is not None:
            self.on_changes(changes)

    # -- sync once, stay live ---------------------------------------------------------------

    async def sync_once(self) -> SessionReport:
        """One push and pull. After a restore, a second session pushes what was requeued."""
        report = await self.session(live=False)
        if report.requeued:
            again = await self.session(live=False)
            again.reset, again.restored, again.requeued = True, True, report.requeued
            again.pushed += report.pushed
            again.pulled += report.pulled
            again.rejected = report.rejected + again.rejected
            report = again
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Stay live until `stop`: reconnect after any failure, with back-off and jitter.

        Raises AuthenticationError when the server refuses the token (nothing to retry).
        """
        attempt = 0
        while not stop.is_set():
            self.went_live = False
            failure: SyncError | None = None
            try:
                await self.session(live=True, stop=stop)
            except AuthenticationError as exc:
                self.last_error = exc
                self.store.note("last_error", str(exc))
                raise
            except SyncError as exc:
                self.last_error = exc
                self.store.note("last_error", str(exc))
                log.info("sync session ended: %s", exc)
                failure = exc
                if exc.retry_after_ms is not None:
                    self.retry_hint = min(exc.retry_after_ms, MAX_RETRY_HINT_MS) / 1000
            if self.went_live:
                attempt = 0  # the link worked: the next failure starts the back-off afresh
            attempt += 1
            delay = backoff_delay(
                attempt - 1, base=self.backoff_base, cap=self.backoff_cap, rng=self.rng
            )
            if self.retry_hint is not None:
                delay, self.retry_hint = self.retry_hint, None
            self.next_attempt_delay = delay
            if failure is not None and self.on_retry is not None and not stop.is_set():
                self.on_retry(failure, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
