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

The decisions are made by a pure state machine, `datagate_replica/machine.py` (its rules, its
table of transitions, its effects); this module is its async shell: the websocket, the store,
the application's callbacks, timers, and `SyncEngine.run()`, which keeps a live session up,
reconnecting with exponential back-off and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from datagate_replica import machine as sm
from datagate_replica.machine import (
    CLOSE_NOT_AUTHENTICATED,
    CONNECT_ACK,
    DISCONNECT,
    ERROR,
    MAX_RETRY_HINT_MS,
    AuthenticationError,
    GapError,
    SessionReport,
    SyncError,
    frame_fault,
    is_restore,
    needs_reset,
    parse_feed,
    receipt_of,
)
from datagate_replica.store import Change, Store

__all__ = [
    "AuthenticationError",
    "GapError",
    "SessionReport",
    "SyncEngine",
    "SyncError",
    "backoff_delay",
    "check_url",
    "describe_close",
    "frame_fault",
    "is_restore",
    "needs_reset",
    "parse_feed",
    "receipt_of",
]

log = logging.getLogger("datagate_replica")


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

    async def send(self, message: sm.Send) -> None:
        header = {
            "id": message.message_id,
            "transactionId": self.transaction_id,
            "correlationId": message.correlation_id,
            "tenant": self.tenant,
            "collection": self.collection,
            "userName": self.user_name,
            "timestamp": _now_ms(),
            "messageType": message.message_type,
            "origin": self.origin,
        }
        # UTF-8 as the server measures it (not \u escapes, which can take six bytes a letter).
        text = json.dumps(
            {"header": header, **message.body}, ensure_ascii=False, separators=(",", ":")
        )
        await self.ws.send(text)

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
    """Syncs one Store with one collection of a DataGate server: the machine's async shell."""

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
        # Every message the server sends, before the session handles it (a recorder's hook).
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        # A stopping server's Disconnect says when to come back (retryAfterMs), so that its
        # replicas reconnect spread over a few seconds; the next attempt waits that long.
        self.retry_hint: float | None = None
        self.next_attempt_delay: float | None = None  # seconds; for status and tests
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.live = False  # True while a live session is up
        self.went_live = False  # the last session reached the live phase
        self.last_error: SyncError | None = None
        self.machine: sm.SyncMachine | None = None  # the session's, while one runs
        self._wake = asyncio.Event()
        self._live_event = asyncio.Event()

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

    def _machine(self, *, live: bool, purpose: sm.Purpose) -> sm.SyncMachine:
        config = sm.Config(
            token=self.token,
            name=self.name,
            live=live,
            purpose=purpose,
            ranges=self.ranges,
            view=self.view,
            pull_batch_size=self.pull_batch_size,
            push_chunk_size=self.push_chunk_size,
            push_chunk_bytes=self.push_chunk_bytes,
            push_window=self.push_window,
            reply_timeout=self.reply_timeout,
        )
        total = self.store.count()["journal"] if self.on_push_progress is not None else 0
        return sm.SyncMachine(
            config,
            stored=self.store.markers(),
            suspects=self.store.suspects(),
            frame_limit=self.store.frame_limit(),
            max_document_bytes=self.store.max_document_bytes(),
            journal_total=total,
        )

    async def session(self, *, live: bool, stop: asyncio.Event | None = None) -> SessionReport:
        """Connect, push, pull; with `live`, stay live until `stop` is set or the link drops."""
        return await self._converse(self._machine(live=live, purpose=sm.Purpose.SYNC), stop)

    async def verify(self, *, repair: bool = False) -> SessionReport:
        """Prove this replica holds what the server holds, by range checks; with `repair`,
        repair the differences (then push and pull as a sync does). `report.equal` says
        whether there was no difference; `report.differences` lists them."""
        purpose = sm.Purpose.REPAIR if repair else sm.Purpose.VERIFY
        report = await self._converse(self._machine(live=False, purpose=purpose), None)
        if repair and report.differences:
            again = await self.verify(repair=False)
            report.equal = again.equal
            report.range_rounds += again.range_rounds
        return report

    async def _converse(self, machine: sm.SyncMachine, stop: asyncio.Event | None) -> SessionReport:
        """Run one session: open the websocket, then perform the machine's effects and feed it
        what arrives until it ends."""
        self.machine = machine
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
                await self._perform(conn, machine, machine.start())
                while not machine.done:
                    try:
                        message = await conn.receive(machine.timeout)
                    except SyncError as exc:
                        await self._perform(conn, machine, machine.failed(exc))
                        continue
                    await self._deliver(conn, machine, message)
                    if machine.state == sm.State.LIVE:
                        await self._live(conn, machine, stop or asyncio.Event())
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise SyncError(f"cannot connect to {self.endpoint}: {exc}") from exc
        finally:
            self.live = False
            self._live_event.clear()
        if machine.error is not None:
            raise machine.error
        return machine.report

    async def _deliver(
        self, conn: _Session, machine: sm.SyncMachine, message: dict[str, Any]
    ) -> None:
        if self.on_message is not None:
            self.on_message(message)
        if message["header"]["messageType"] == CONNECT_ACK:
            conn.user_name = message["header"].get("userName")
        await self._perform(conn, machine, machine.receive(message))

    async def _perform(
        self, conn: _Session, machine: sm.SyncMachine, effects: list[sm.Effect]
    ) -> None:
        """Perform effects in order; a store read's answer goes back to the machine, and the
        effects it returns are performed next."""
        queue = list(effects)
        while queue:
            effect = queue.pop(0)
            try:
                queue = await self._do(conn, machine, effect) + queue
            except ConnectionClosed as exc:
                # The link is gone: what was still to be sent or read goes with it (every store
                # write a message called for comes before its answer in the queue).
                queue = machine.failed(_closed_error(exc))

    async def _do(
        self, conn: _Session, machine: sm.SyncMachine, effect: sm.Effect
    ) -> list[sm.Effect]:
        store = self.store
        if isinstance(effect, sm.Send):
            if effect.message_type == DISCONNECT:
                with contextlib.suppress(ConnectionClosed):
                    await conn.send(effect)
            else:
                await conn.send(effect)
            return []
        if isinstance(effect, sm.ReadJournal):
            return machine.journal_read(store.journal(limit=effect.limit, after=effect.after))
        if isinstance(effect, sm.Settle):
            return machine.settle_done(store.settle(effect.sent, effect.receipt, at_ms=_now_ms()))
        if isinstance(effect, sm.RejectPending):
            rejected = store.reject_pending(
                effect.doc_id,
                effect.change_no,
                code=effect.code,
                error=effect.error,
                at_ms=_now_ms(),
            )
            if rejected is not None:
                log.warning("refused %r (%s): %s", effect.doc_id, effect.code, effect.error)
            return [] if effect.quiet else machine.reject_done(rejected)
        if isinstance(effect, sm.StoreSuspects):
            store.suspects_store(effect.change_nos)
        elif isinstance(effect, sm.StoreFrameLimit):
            store.frame_limit_store(effect.limit)
        elif isinstance(effect, sm.ApplyRemote):
            self._notify(store.apply_remote(effect.versions, markers=effect.markers))
        elif isinstance(effect, sm.StoreMarkers):
            store.markers_store(effect.markers)
        elif isinstance(effect, sm.ResetComplete):
            changes, requeued = store.reset_complete(
                snapshot=effect.snapshot, markers=effect.markers, restore=effect.restore
            )
            self._notify(changes)
            return machine.reset_done(requeued)
        elif isinstance(effect, sm.ReadHeld):
            return machine.held_read(store.held_versions())
        elif isinstance(effect, sm.RepairLocal):
            self._notify(store.repair_local(drop=effect.drop, push=effect.push))
        elif isinstance(effect, sm.PushProgress):
            if self.on_push_progress is not None:
                self.on_push_progress(effect.done, effect.total)
        elif isinstance(effect, sm.PullProgress):
            if self.on_progress is not None:
                self.on_progress(effect.done, effect.total)
        elif isinstance(effect, sm.NoteLastSync):
            store.note("last_sync", _now_ms())
        elif isinstance(effect, sm.GoLive):
            self.live = True
            self.went_live = True
            self._live_event.set()
            self.last_error = None
        elif isinstance(effect, sm.Close):
            await conn.ws.close()
        elif isinstance(effect, sm.End) and machine.retry_after_ms is not None:
            self.retry_hint = machine.retry_after_ms / 1000
        return []

    async def _live(self, conn: _Session, machine: sm.SyncMachine, stop: asyncio.Event) -> None:
        """The live phase: what arrives, local changes (`poke`, or a one-second tick), `stop`."""
        reader = asyncio.ensure_future(conn.receive(None))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not machine.done:
                await self._perform(conn, machine, machine.wake())
                if machine.done:
                    return
                self._wake.clear()
                waker = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait(
                    {reader, stopper, waker}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                waker.cancel()
                if stopper in done:
                    await self._perform(conn, machine, machine.stop())
                    return
                if reader in done:
                    try:
                        message = reader.result()
                    except SyncError as exc:  # a server error or a closed link
                        await self._perform(conn, machine, machine.failed(exc))
                        return
                    reader = asyncio.ensure_future(conn.receive(None))
                    await self._deliver(conn, machine, message)
        finally:
            for task in (reader, stopper):
                task.cancel()
            with contextlib.suppress(BaseException):
                await reader

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
