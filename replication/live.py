"""Collection feeds on the process hub: one database read per change for every live session.

Fan-out is where the time goes (docs/STYLE, "Fan-out"), so live sessions do not each listen to
the channel layer. Each process has one hub (`core.hub.Hub`: one layer channel, one rejoin
rule, one poll fallback); `LiveFeeds` is its adapter for collections. It joins the doorbell
group of every collection that has a live session here, once. On each bell (or every
`LIVE_POLL_INTERVAL` seconds, the hub's poll, so a lost bell only delays a feed) a
collection's `CollectionFeed`
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

Live sessions register with the hub itself (`core.hub.process_hub`), which closes them on a
server shutdown; `LiveFeeds` only feeds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from channels.db import database_sync_to_async
from django.conf import settings

from core.hub import Hub, process_hub
from replication import selectors
from replication.changes import body_of
from replication.data_views import ViewSession, view_feed
from replication.doorbell import (
    COLLECTION_CHANGED,
    REPLICA_CONTROL_GROUP,
    REPLICA_DISCONNECT,
    VIEW_CHANGED,
    collection_group,
)
from replication.protocol.markers import Markers
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
    # `changes` read their bodies as JSON text, to splice them; `with_values` decodes them once
    # here for every reader that needs the values (views, CouchDB feeds, GraphQL subscriptions).
    _with_values: list[list[Change]] = field(default_factory=list, repr=False)

    def with_values(self) -> list[Change]:
        """The block's changes with their bodies' values (and their text, still spliced)."""
        if not self._with_values:
            self._with_values.append(
                [
                    change
                    if change.version.body is not None or change.version.text is None
                    else Change(change.seq, replace(change.version, body=body_of(change.version)))
                    for change in self.changes
                ]
            )
        return self._with_values[0]

    def view_body(self, view: ViewSession) -> str:
        """The feed body of this block through `view`: each change is evaluated once per
        (view, binding) in this process, however many replicas sync through it."""
        body = self.view_bodies.get(view.key)
        if body is None:
            feed = view_feed(self.with_values(), selector=view.selector)
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


class CollectionFeed:
    """The live feed of one collection in this process."""

    def __init__(self, hub: LiveFeeds, collection_id: int, position: int) -> None:
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

    def poke(self) -> None:
        """The hub's poll: read the database even without a bell (and tick the sessions)."""
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
            await self._wake.wait()
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
            # Bodies as text, spliced into the shared body; views decode them (`view_feed`).
            page = await database_sync_to_async(selectors.change_page)(
                collection_id=self.collection_id, after_seq=self.position, limit=limit, as_text=True
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


LIVE_POLL = "live"


class LiveFeeds:
    """The hub's adapter for collection feeds and operator requests to replicas."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.feeds: dict[int, CollectionFeed] = {}
        # Sessions by replica pk, for operator requests (the console's disconnect).
        self.replicas: dict[int, set[LiveSession]] = {}
        self._control_joined = False
        self._acks: dict[int, int] = {}
        # collection pk -> (acks, total ms, max ms) of live feed acks not yet written
        self._latency: dict[int, tuple[int, int, int]] = {}
        self._ack_flush: asyncio.TimerHandle | None = None
        self._ack_task: asyncio.Task[None] | None = None
        hub.on(COLLECTION_CHANGED, self._collection_changed)
        hub.on(REPLICA_DISCONNECT, self._replica_disconnect)
        hub.on(VIEW_CHANGED, self._view_changed)
        hub.every(LIVE_POLL, poll_interval, self._poll)

    # --- feeds ---------------------------------------------------------------------------

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
            await self.hub.group_join(collection_group(collection_id))
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
            await self.hub.group_leave(collection_group(collection_id))

    async def _poll(self) -> None:
        for feed in list(self.feeds.values()):
            feed.poke()

    def _collection_changed(self, message: dict[str, Any]) -> None:
        feed = self.feeds.get(message.get("collection", -1))
        if feed is not None:
            feed.ring(int(message.get("seq", 0)))

    # --- operator requests -----------------------------------------------------------------

    async def attach_replica(self, session: LiveSession, *, replica_pk: int) -> None:
        """`session` serves this replica: operator requests for it reach it from now on."""
        self.replicas.setdefault(replica_pk, set()).add(session)
        if not self._control_joined:
            self._control_joined = True
            await self.hub.group_join(REPLICA_CONTROL_GROUP)

    def detach_replica(self, session: LiveSession, *, replica_pk: int) -> None:
        held = self.replicas.get(replica_pk)
        if held is not None:
            held.discard(session)
            if not held:
                del self.replicas[replica_pk]

    def _view_changed(self, message: dict[str, Any]) -> None:
        """Sessions on a view whose definition changed end; their replicas reconnect to it."""
        view_pk = int(message.get("view", -1))
        for session in list(self.hub.sessions):
            view = getattr(session, "view", None)
            if isinstance(view, ViewSession) and view.view_pk == view_pk:
                live = cast(LiveSession, session)
                task = asyncio.ensure_future(live.disconnect_requested())
                task.add_done_callback(_log_failure)

    def _replica_disconnect(self, message: dict[str, Any]) -> None:
        for session in list(self.replicas.get(int(message.get("replica", -1)), ())):
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


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("operator request failed", exc_info=task.exception())


def live_feeds() -> LiveFeeds:
    """This process's collection feeds (on `core.hub.process_hub()`)."""
    return process_hub().adapter(LiveFeeds)
