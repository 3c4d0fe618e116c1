"""The live feed hub: one doorbell listener per process, one database read per change.

Fan-out is where the time goes (docs/STYLE, "Fan-out"), so live sessions do not each listen to
the channel layer. Each process (each event loop) has one `LiveHub`. It owns one channel on
the layer and joins the doorbell group of every collection that has a live session here,
once, re-joining well within the layer's `group_expiry`. On each bell (or every
`LIVE_POLL_INTERVAL` seconds, so a lost bell only delays a feed) a collection's `CollectionFeed`
reads the new changes from the database once, encodes the feed body once, and offers that
`FeedBlock` to every local session of the collection. A session that is up to date sends the
same bytes under its own header; one that is behind, has a full window or filters what its
user may read, reads its own coalesced feed (docs/protocol.md, "Live").

The hub paces itself by the replicas' acks. While most sessions that were sent the last block
have not acknowledged it yet, new changes wait (at most `LIVE_COALESCE_MAX`) and then go out
together as one block. On a quiet server acks return within a millisecond or two and every
change goes out on its own; on a busy one the time per frame (daphne, the client, the ack
coming back), not the database, is what runs out (bench/RESULTS.md), so each frame carries
more changes instead of the queues growing.

The database is the truth, the bell only says "collection 7 is at seq 1042"
(docs/decisions/0002-the-database-is-the-truth.md).

The hub also knows every open session of the process, so that a server shutdown (SIGTERM or
SIGINT under daphne) can send each a Disconnect and close it with 1001 before daphne cancels
the applications (`core.shutdown.install_shutdown_handler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from core.shutdown import DRAINING, install_shutdown_handler
from replication import selectors
from replication.data_views import ViewSession, view_feed
from replication.doorbell import (
    COLLECTION_CHANGED,
    REPLICA_CONTROL_GROUP,
    REPLICA_DISCONNECT,
    VIEW_CHANGED,
    collection_group,
)
from replication.markers import Markers
from replication.protocol.messages import encode_served
from replication.selectors import Change
from replication.services.events import unservable_record
from replication.services.replicas import feed_latency_record_many, replicas_acked

logger = logging.getLogger(__name__)

# Seconds between database writes of live replicas' acknowledged positions.
ACK_RECORD_INTERVAL = 1.0


def poll_interval() -> float:
    """Seconds between database checks of a live collection (DATAGATE LIVE_POLL_INTERVAL):
    a lost bell delays a feed at most this long. Sessions check their feed.ack deadline as
    often."""
    return float(settings.DATAGATE["LIVE_POLL_INTERVAL"])


def coalesce_max() -> float:
    """Seconds a collection's next block may wait for acks of the last one (DATAGATE
    LIVE_COALESCE_MAX): the most pacing adds to a feed's latency."""
    return float(settings.DATAGATE["LIVE_COALESCE_MAX"])


# A new block goes out once at most this share of the sessions sent the last one still owe its
# ack: a few slow replicas (a phone on a bad network) do not hold up everyone else.
COALESCE_STRAGGLERS = 0.1

# How long a shutdown waits for sessions to close after their Disconnect before daphne goes on.
SHUTDOWN_GRACE = 3.0


@dataclass(frozen=True, slots=True)
class FeedBlock:
    """Changes of one collection covering (start, end], with their feed body encoded once."""

    collection_id: int
    start: int
    end: int
    epoch: int
    changes: list[Change]
    body: str
    # The block as seen through each data view binding, classified and encoded once for all
    # the sessions of that binding (`view_body`).
    view_bodies: dict[tuple[Any, ...], str] = field(default_factory=dict)

    def view_body(self, view: ViewSession) -> str:
        """The feed body of this block through `view`: each change is evaluated once per
        (view, binding) in this process, however many replicas sync through it."""
        body = self.view_bodies.get(view.key)
        if body is None:
            feed = view_feed(self.changes, selector=view.selector)
            body, _ = encode_served(
                {
                    "feed": feed,
                    "startMarkers": Markers(self.start, view.epoch).to_wire(),
                    "endMarkers": Markers(self.end, view.epoch).to_wire(),
                }
            )
            self.view_bodies[view.key] = body
        return body


class LiveSession(Protocol):
    """What the hub needs of a session (the consumer implements it)."""

    async def offer(self, block: FeedBlock) -> bool:
        """Send the block (True: its shared bytes went out) or catch up on it later."""
        ...

    def tick(self, now: float) -> None: ...

    async def shut_down(self, retry_after_ms: int | None = None) -> None: ...

    async def disconnect_requested(self) -> None: ...


def _rejoin_interval() -> float:
    layers: dict[str, Any] = getattr(settings, "CHANNEL_LAYERS", {})
    for config in layers.values():
        expiry = config.get("CONFIG", {}).get("group_expiry")
        if expiry:
            return max(1.0, min(float(expiry) / 3, 300.0))
    return 300.0


class CollectionFeed:
    """The live feed of one collection in this process."""

    def __init__(self, hub: LiveHub, collection_id: int, position: int) -> None:
        self.hub = hub
        self.collection_id = collection_id
        self.position = position
        self.sessions: set[LiveSession] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Pacing (module docstring): the sessions sent the last block that have not acked it.
        self.owing: set[LiveSession] = set()
        self.owing_end = 0
        self._owing_allowed = 0
        self._acked = asyncio.Event()
        self._sent_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"live-{self.collection_id}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def ring(self, seq: int) -> None:
        if seq > self.position:
            self._wake.set()

    def acked(self, session: LiveSession, seq: int) -> None:
        """`session` acknowledged up to `seq`."""
        if seq >= self.owing_end:
            self.settle(session)

    def settle(self, session: LiveSession) -> None:
        """`session` owes no ack any more (it acked, or it left)."""
        self.owing.discard(session)
        if len(self.owing) <= self._owing_allowed:
            self._acked.set()

    async def _paced(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let new changes gather while the last block is still being acknowledged."""
        if self._acked.is_set():
            return
        hold = self._sent_at + coalesce_max() - loop.time()
        if hold > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), hold)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll_interval())
            await self._paced(loop)
            self._wake.clear()
            try:
                await self.pump()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("live feed of collection %s failed to read", self.collection_id)
            now = loop.time()
            for session in list(self.sessions):
                session.tick(now)

    async def pump(self) -> None:
        """Read what is new since `position` and offer it to every session, page by page."""
        limit = int(settings.DATAGATE["CHUNK_SIZE"])
        while self.sessions:
            page = await database_sync_to_async(selectors.change_page)(
                collection_id=self.collection_id, after_seq=self.position, limit=limit
            )
            if page.covered <= self.position:
                return
            body, skipped = encode_served(
                {
                    "feed": selectors.feed_from_changes(page.changes),
                    "startMarkers": Markers(self.position, page.epoch).to_wire(),
                    "endMarkers": Markers(page.covered, page.epoch).to_wire(),
                }
            )
            if skipped:  # stored rows that cannot be encoded: left out, never a dead feed
                await database_sync_to_async(unservable_record)(
                    collection_id=self.collection_id, skipped=skipped, via="live feed"
                )
            block = FeedBlock(
                self.collection_id, self.position, page.covered, page.epoch, page.changes, body
            )
            self.position = page.covered
            owing: set[LiveSession] = set()
            for session in list(self.sessions):
                try:
                    if await session.offer(block):
                        owing.add(session)
                except Exception:  # one broken session must not stop the others' feeds
                    logger.exception("offering a feed to a session failed")
            self.owing, self.owing_end = owing, block.end
            self._owing_allowed = int(len(owing) * COALESCE_STRAGGLERS)
            self._sent_at = asyncio.get_running_loop().time()
            if len(owing) > self._owing_allowed:
                self._acked.clear()
            else:
                self._acked.set()
            if page.covered >= page.head:
                return


class LiveHub:
    """One per event loop (= per daphne process): see the module docstring."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.feeds: dict[int, CollectionFeed] = {}
        self.sessions: set[LiveSession] = set()
        # Sessions by replica pk, for operator requests (the console's disconnect).
        self.replicas: dict[int, set[LiveSession]] = {}
        self._control_joined = False
        self._reader: asyncio.Task[None] | None = None
        self._rejoiner: asyncio.Task[None] | None = None
        self.shutting_down = False
        self._all_gone = asyncio.Event()
        self._acks: dict[int, int] = {}
        # collection pk -> (acks, total ms, max ms) of live feed acks not yet written
        self._latency: dict[int, tuple[int, int, int]] = {}
        self._ack_flush: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Task[None] | None = None

    # --- sessions ------------------------------------------------------------------------

    def register(self, session: LiveSession) -> None:
        self.sessions.add(session)

    def unregister(self, session: LiveSession) -> None:
        self.sessions.discard(session)
        for replica_pk, held in list(self.replicas.items()):
            held.discard(session)
            if not held:
                del self.replicas[replica_pk]
        if not self.sessions:
            self._all_gone.set()

    async def join(self, session: LiveSession, *, collection_id: int, from_seq: int) -> int:
        """Offer the collection's feed to `session` (it has all up to from_seq) from now on.

        Returns the position the hub has offered up to: a session behind it catches up itself.
        """
        feed = self.feeds.get(collection_id)
        if feed is None:
            feed = CollectionFeed(self, collection_id, from_seq)
            self.feeds[collection_id] = feed
            feed.sessions.add(session)
            feed.start()
            await self._group_add(collection_id)
        else:
            feed.sessions.add(session)
        # Whatever committed between the pull's end and now is read on the next pump.
        feed.ring(feed.position + 1)
        return feed.position

    async def leave(self, session: LiveSession, *, collection_id: int) -> None:
        feed = self.feeds.get(collection_id)
        if feed is None:
            return
        feed.sessions.discard(session)
        feed.settle(session)
        if not feed.sessions:
            feed.stop()
            del self.feeds[collection_id]
            if self.layer is not None and self.channel is not None:
                with contextlib.suppress(Exception):
                    await self.layer.group_discard(collection_group(collection_id), self.channel)

    async def attach_replica(self, session: LiveSession, *, replica_pk: int) -> None:
        """`session` serves this replica: operator requests for it reach it from now on."""
        self.replicas.setdefault(replica_pk, set()).add(session)
        if self._control_joined or self.layer is None:
            return
        try:
            await self._ensure_channel()
            assert self.layer is not None and self.channel is not None
            await self.layer.group_add(REPLICA_CONTROL_GROUP, self.channel)
            self._control_joined = True
        except Exception:
            logger.warning("could not join the replica control group", exc_info=True)

    def _disconnect_view(self, view_pk: int) -> None:
        """Sessions on a view whose definition changed end; their replicas reconnect to it."""
        for session in list(self.sessions):
            view = getattr(session, "view", None)
            if isinstance(view, ViewSession) and view.view_pk == view_pk:
                task = asyncio.ensure_future(session.disconnect_requested())
                task.add_done_callback(_log_failure)

    def _disconnect_replica(self, replica_pk: int) -> None:
        for session in list(self.replicas.get(replica_pk, ())):
            task = asyncio.ensure_future(session.disconnect_requested())
            task.add_done_callback(_log_failure)

    # --- acknowledged positions ---------------------------------------------------------------

    def note_ack(
        self,
        *,
        replica_pk: int,
        seq: int,
        collection_id: int | None = None,
        latency: float | None = None,
    ) -> None:
        """A live replica acknowledged up to `seq`. Live acks come once per feed from every
        replica: they are written for all replicas of the process together, at most once per
        ACK_RECORD_INTERVAL, in one database step. `latency` (seconds from the feed sent to
        its ack) is summed per collection for the console's feed latency chart."""
        if seq > self._acks.get(replica_pk, 0):
            self._acks[replica_pk] = seq
        if latency is not None and collection_id is not None:
            ms = max(0, round(latency * 1000))
            acks, total, top = self._latency.get(collection_id, (0, 0, 0))
            self._latency[collection_id] = (acks + 1, total + ms, max(top, ms))
        if self._ack_flush is None:
            loop = asyncio.get_running_loop()
            self._ack_flush = loop.call_later(ACK_RECORD_INTERVAL, self._flush_acks_soon)

    def feed_acked(self, session: LiveSession, *, collection_id: int, seq: int) -> None:
        """A live session acknowledged its feed up to `seq` (paces the collection's feed)."""
        feed = self.feeds.get(collection_id)
        if feed is not None:
            feed.acked(session, seq)

    def _flush_acks_soon(self) -> None:
        self._ack_task = asyncio.get_running_loop().create_task(self.record_acks())

    def take_ack(self, replica_pk: int) -> int | None:
        """The replica's acknowledged position not yet written (the session writes it)."""
        return self._acks.pop(replica_pk, None)

    async def record_acks(self) -> None:
        self._ack_flush = None
        positions, self._acks = self._acks, {}
        latency, self._latency = self._latency, {}
        if positions:
            try:
                await database_sync_to_async(replicas_acked)(positions=positions)
            except Exception:
                logger.warning(
                    "could not record %d acknowledged positions", len(positions), exc_info=True
                )
        if latency:
            try:
                await database_sync_to_async(feed_latency_record_many)(samples=latency)
            except Exception:
                logger.warning("could not record feed latency", exc_info=True)

    # --- the doorbell ----------------------------------------------------------------------

    async def _ensure_channel(self) -> None:
        if self.layer is not None and self.channel is None:
            self.channel = await self.layer.new_channel("datagate-live.")
            self._reader = asyncio.create_task(self._read_bells(), name="live-doorbell")
            self._rejoiner = asyncio.create_task(self._rejoin(), name="live-rejoin")

    async def _group_add(self, collection_id: int) -> None:
        if self.layer is None:
            return
        try:
            await self._ensure_channel()
            assert self.channel is not None
            await self.layer.group_add(collection_group(collection_id), self.channel)
        except Exception:
            # Without the layer, feeds still arrive by polling (LIVE_POLL_INTERVAL).
            logger.warning(
                "could not join the doorbell of collection %s", collection_id, exc_info=True
            )

    async def _read_bells(self) -> None:
        assert self.layer is not None and self.channel is not None
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("doorbell receive failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if message.get("type") == REPLICA_DISCONNECT:
                self._disconnect_replica(int(message.get("replica", -1)))
                continue
            if message.get("type") == VIEW_CHANGED:
                self._disconnect_view(int(message.get("view", -1)))
                continue
            if message.get("type") != COLLECTION_CHANGED:
                continue
            feed = self.feeds.get(message.get("collection", -1))
            if feed is not None:
                feed.ring(int(message.get("seq", 0)))

    async def _rejoin(self) -> None:
        """Re-join every group well within group_expiry, so membership never lapses."""
        interval = _rejoin_interval()
        while True:
            await asyncio.sleep(interval)
            for collection_id in list(self.feeds):
                await self._group_add(collection_id)
            if self._control_joined and self.layer is not None and self.channel is not None:
                with contextlib.suppress(Exception):
                    await self.layer.group_add(REPLICA_CONTROL_GROUP, self.channel)

    # --- shutdown ------------------------------------------------------------------------

    def retry_hint_ms(self) -> int:
        """When a session of a stopping server should come back: uniform over DRAIN_SPREAD,
        so a process's replicas reconnect spread over a few seconds, not in one instant."""
        spread = max(0.0, float(settings.DATAGATE["DRAIN_SPREAD"]))
        return int(random.uniform(0, spread * 1000))  # noqa: S311 - jitter, not security

    async def shut_down(self) -> None:
        """Drain: refuse new sessions and answer /readyz 503 (`DRAINING`), wait DRAIN_DELAY
        for the load balancer to notice, then send every session Disconnect with a retry hint
        and close 1001; wait a little for them to go (docs/deploy.md)."""
        DRAINING.set()
        self.shutting_down = True
        delay = float(settings.DATAGATE["DRAIN_DELAY"])
        if delay > 0:
            logger.info("draining: /readyz answers 503; closing sessions in %.1f s", delay)
            await asyncio.sleep(delay)
        sessions = list(self.sessions)
        logger.info("shutting down: closing %d replication sessions", len(sessions))
        await asyncio.gather(
            *(s.shut_down(self.retry_hint_ms()) for s in sessions), return_exceptions=True
        )
        if self.sessions:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), SHUTDOWN_GRACE)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("operator request failed", exc_info=task.exception())


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LiveHub] = weakref.WeakKeyDictionary()


def get_hub() -> LiveHub:
    """This event loop's hub (one per daphne process; one per test event loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = LiveHub()
        _hubs[loop] = hub
        install_shutdown_handler(loop, hub)
    return hub
