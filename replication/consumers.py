"""The replication websocket consumer: a thin I/O shell around `protocol.machine.Session`.

It parses each frame once, hands the message to the session machine and performs the effects
the machine returns: sends, and database steps, each one `database_sync_to_async` call into
`services` or `selectors`. Live feeds come from the process hub (`core.hub`, with
`live.LiveFeeds`), not from a channel-layer subscription per consumer (docs/protocol.md, "Live").
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from django.conf import settings

from core import metrics
from core.consumer_dispatch import DirectDispatchMixin
from core.daphne_websocket import OVERSIZED, install_close_handling
from core.errors import DataGateError, ErrorCode
from core.hub import Hub, process_hub
from replication import data_views, ranges, selectors
from replication.consumer_access import SessionAccess, access_baseline
from replication.live import FeedBlock, LiveFeeds, live_feeds
from replication.protocol import machine as mc
from replication.protocol.markers import Markers
from replication.protocol.messages import encode, encode_served, parse_message, splice
from replication.protocol.ranges import BucketTable
from replication.selectors import Change
from replication.services.events import error_event_record, unservable_record
from replication.services.replicas import replica_acked, replica_disconnected
from replication.services.sessions import (
    SessionGrant,
    session_chunks_apply,
    session_open,
)

logger = logging.getLogger(__name__)

install_close_handling()

# Not a configured alias: Channels then gives the consumer no layer channel of its own. Live
# sessions hear about changes through the process hub (core.hub), which listens once per process.
NO_CHANNEL_LAYER = "datagate.sessions-listen-through-the-live-hub"

# Chunks applied in one database step (one transaction) at most.
APPLY_BATCH = 64


class ReplicationConsumer(DirectDispatchMixin, AsyncConsumer):
    """`/ws/datagate/{tenant}/{collection}/[{user}/]`: one replication session per socket."""

    channel_layer_alias = NO_CHANNEL_LAYER

    # --- the socket ----------------------------------------------------------------------

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        route = self.scope["url_route"]["kwargs"]
        knobs = settings.DATAGATE
        self.tenant_slug: str = route["tenant"]
        self.collection_name: str = route["collection"]
        self.url_user: str | None = route.get("user")
        self.url_view: str | None = route.get("view")
        # The data view the session syncs (docs/protocol.md section 12), decided at Connect.
        self.view: data_views.ViewSession | None = None
        # The epoch of the older definition of the view a pull re-syncs from (section 12.1).
        self.resync_from: int | None = None
        self.pushed = False  # anything applied from this replica (a fresh view pull then
        # reads every change, so that what it pushed outside the view leaves it)
        self.max_frame = int(knobs["MAX_FRAME_BYTES"])
        self.session = mc.Session(
            tenant=self.tenant_slug,
            collection=self.collection_name,
            server_id=str(knobs["SERVER_ID"]),
            limits=mc.Limits(
                chunk_size=int(knobs["CHUNK_SIZE"]),
                chunks_in_flight=int(knobs["PULL_CHUNKS_IN_FLIGHT"]),
                feed_window=int(knobs["FEED_WINDOW"]),
                feed_ack_timeout=float(knobs["FEED_ACK_TIMEOUT"]),
                tombstone_ttl_days=int(knobs["TOMBSTONE_TTL_DAYS"]),
            ),
        )
        self.grant: SessionGrant | None = None
        self.range_buckets: BucketTable | None = None  # a range check's, for its next rounds
        self.closed = False
        self.cleaned_up = False
        self.live_joined = False
        self.tasks: set[asyncio.Task[Any]] = set()
        # Pushed chunks and live feeds waiting for the database (see `_queue_apply`).
        self.applies: deque[mc.ApplyChunk] = deque()
        self.applier: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.hub: Hub = process_hub()
        self.feeds: LiveFeeds = live_feeds()
        await self.base_send({"type": "websocket.accept"})
        metrics.connection_opened(endpoint="sync")
        self.hub.register(self)
        if self.hub.shutting_down:
            await self.shut_down(self.hub.retry_hint_ms())
            return
        self.connect_timer = self.loop.call_later(
            float(knobs["CONNECT_TIMEOUT"]), self._connect_timed_out
        )

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        frame: str | bytes | None = message.get("text")
        if frame is None:
            frame = message.get("bytes") or b""
        # A message over the limit that daphne read and dropped (core/daphne_websocket.py) has no
        # frame, only its size.
        oversized = message.get(OVERSIZED)
        size = (
            int(oversized)
            if oversized is not None
            else len(frame)
            if isinstance(frame, bytes)
            else len(frame.encode())
        )
        metrics.bytes_record(direction="in", count=size)
        if size > self.max_frame:
            error = DataGateError(ErrorCode.FRAME_TOO_LARGE, size=size, limit=self.max_frame)
            await self.run(self.session.fail(error))
            return
        try:
            parsed = parse_message(frame)
        except DataGateError as error:
            effects = self.session.frame_rejected(error)
        else:
            effects = self.session.receive(parsed, now=self.loop.time())
        await self.run(effects)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closed = True
        self.session.state = mc.State.CLOSED
        await self._clean_up()
        raise StopConsumer

    def _connect_timed_out(self) -> None:
        if self.closed or self.session.state is not mc.State.OPEN or self.session.connecting:
            return
        error = DataGateError(
            ErrorCode.CONNECT_TIMEOUT, seconds=settings.DATAGATE["CONNECT_TIMEOUT"]
        )
        self._spawn(self.run(self.session.fail(error)))

    # --- running effects -----------------------------------------------------------------

    async def run(self, effects: Iterable[mc.Effect]) -> None:
        """Perform effects in order; an effect's follow-ups run before the next effect."""
        queue = deque(effects)
        while queue:
            effect = queue.popleft()
            try:
                more = await self._perform(effect)
            except asyncio.CancelledError:
                raise
            except Exception:
                reference = uuid.uuid4().hex[:12]
                logger.exception("replication session failed (reference %s)", reference)
                more = self.session.fail(DataGateError(ErrorCode.INTERNAL, reference=reference))
                queue.clear()
            queue.extendleft(reversed(more))

    async def _perform(self, effect: mc.Effect) -> list[mc.Effect]:
        if isinstance(effect, mc.ApplyChunk):
            self._queue_apply(effect)
            return []
        if isinstance(effect, mc.Close) or (
            self.session.state is not mc.State.LIVE and not isinstance(effect, mc.RecordAck)
        ):
            # Before Live (a push's batch.end.ack, the pull) and at a close, what the session
            # does keeps its order after the chunks received before it. Not while Live: the hub
            # sends feeds from its own task the moment `sent_seq` moves, so a feed read here
            # must go out at once, or it could arrive after the next one.
            await self._applied()
        if isinstance(effect, mc.Send):
            text, skipped = encode_served(effect.message)
            if skipped:
                await self._unservable(skipped)
            await self._send_text(text)
            return []
        if isinstance(effect, mc.ReportError):
            await self._report(effect.error)
            return []
        if isinstance(effect, mc.Close):
            await self._close(effect.code)
            return []
        if isinstance(effect, mc.Authenticate):
            return await self._authenticate(effect)
        grant = self.grant
        assert grant is not None, f"{effect} before the session was authenticated"
        if isinstance(effect, mc.ReadPosition):
            last_seq, purge_seq, epoch = await database_sync_to_async(selectors.collection_head)(
                collection_id=grant.collection_id
            )
            resync_epoch = None
            if self.view is not None:
                epoch = self.view.epoch
                pull = self.session.pull
                if pull is not None and pull.start.epoch in self.view.previous:
                    # Synced through an older definition: re-synced by difference.
                    resync_epoch = self.resync_from = pull.start.epoch
            return self.session.position_done(
                last_seq=last_seq, purge_seq=purge_seq, epoch=epoch, resync_epoch=resync_epoch
            )
        if isinstance(effect, mc.ReadDifference):
            assert self.view is not None and self.session.pull is not None
            assert self.resync_from is not None
            old = self.view.previous[self.resync_from]
            changes, last_id, more = await database_sync_to_async(data_views.view_difference_page)(
                collection_id=grant.collection_id,
                old=old,
                new=self.view.selector,
                up_to_seq=effect.up_to_seq,
                after_id=effect.after_id,
                limit=effect.limit,
            )
            return self.session.difference_done(
                feed=self._feed(changes), count=len(changes), last_id=last_id, more=more
            )
        if isinstance(effect, mc.ReadChunk):
            if self.view is not None:
                page = await database_sync_to_async(data_views.view_change_page)(
                    collection_id=grant.collection_id,
                    selector=self.view.selector,
                    after_seq=effect.after_seq,
                    limit=effect.limit,
                    up_to_seq=effect.up_to_seq,
                    fresh=self._fresh_pull(),
                )
            else:
                page = await database_sync_to_async(selectors.change_page)(
                    collection_id=grant.collection_id,
                    after_seq=effect.after_seq,
                    limit=effect.limit,
                    up_to_seq=effect.up_to_seq,
                    as_text=True,  # bodies spliced into the chunk, never decoded
                )
            return self.session.chunk_done(
                feed=self._feed(page.changes), covered=page.covered, count=len(page.changes)
            )
        if isinstance(effect, mc.ReadVersions):
            held = await database_sync_to_async(selectors.g3_versions)(
                collection_id=grant.collection_id, ids=list(effect.ids)
            )
            read_filter = grant.read_filter
            if read_filter is not None:
                held = {i: v if read_filter(i) else None for i, v in held.items()}
            return self.session.versions_done(held=held)
        if isinstance(effect, mc.ReadFeed):
            page = await database_sync_to_async(selectors.change_page)(
                collection_id=grant.collection_id,
                after_seq=effect.after_seq,
                limit=effect.limit,
                up_to_seq=effect.up_to_seq,
                as_text=True,  # spliced; a view's selector decodes them (`view_feed`)
            )
            metrics.feed_record()
            return self.session.feed_done(
                feed=self._feed(page.changes),
                covered=page.covered,
                count=len(page.changes),
                now=self.loop.time(),
            )
        if isinstance(effect, mc.RecordAck):
            if self.session.state is mc.State.LIVE:
                self.feeds.feed_acked(self, collection_id=grant.collection_id, seq=effect.seq)
                self.feeds.note_ack(
                    replica_pk=grant.replica_pk,
                    seq=effect.seq,
                    collection_id=grant.collection_id,
                    latency=effect.latency,
                )
            else:
                await database_sync_to_async(replica_acked)(
                    replica_pk=grant.replica_pk, seq=effect.seq, pulled=effect.pulled
                )
            return []
        if isinstance(effect, mc.GoLive):
            head = await self.feeds.join(
                self, collection_id=grant.collection_id, from_seq=effect.from_seq
            )
            self.live_joined = True
            return self.session.notice_head(head=head, now=self.loop.time())
        if isinstance(effect, mc.CheckRanges):
            # The per-bucket table a first round computed serves the session's later rounds.
            body, self.range_buckets = await database_sync_to_async(ranges.range_check_answer)(
                collection_id=grant.collection_id,
                replica_pk=grant.replica_pk,
                read_filter=grant.read_filter,
                asks=effect.asks,
                buckets=self.range_buckets,
            )
            return self.session.ranges_answered(body=body, correlation_id=effect.message_id)
        if isinstance(effect, mc.FetchVersions):
            body = await database_sync_to_async(ranges.range_fetch)(
                collection_id=grant.collection_id, read_filter=grant.read_filter, ids=effect.ids
            )
            return self.session.versions_fetched(body=body, correlation_id=effect.message_id)
        if isinstance(effect, mc.RefreshToken):
            return await self.access.refresh(effect)
        if isinstance(effect, mc.SendShared):
            raise AssertionError("SendShared outside offer()")
        raise AssertionError(f"unknown effect {effect!r}")

    # --- applying pushed chunks and live feeds -----------------------------------------------

    def _queue_apply(self, effect: mc.ApplyChunk) -> None:
        """Apply a pushed chunk or live feed without holding up the socket's next frames.

        Chunks that arrive while earlier ones are in the database are applied together, in
        order, in one database step and one transaction (`batch_apply_many`), each
        answered with its own receipt. One step per chunk cost the writer a turn of the event
        loop per chunk: on a busy server that turn, not the write, capped the feeds a writer got
        applied per second (bench/RESULTS.md). Before Live and at a close, later effects wait
        for the queued chunks (`_applied`).
        """
        self.applies.append(effect)
        if self.applier is None or self.applier.done():
            self.applier = asyncio.ensure_future(self._apply_queued())

    async def _applied(self) -> None:
        applier = self.applier
        if applier is not None and not applier.done() and applier is not asyncio.current_task():
            await asyncio.shield(applier)

    async def _apply_queued(self) -> None:
        grant = self.grant
        assert grant is not None
        while self.applies:
            batch = [self.applies.popleft() for _ in range(min(len(self.applies), APPLY_BATCH))]
            try:
                results = await database_sync_to_async(session_chunks_apply)(
                    grant=grant,
                    chunks=[(effect.feed, effect.message_id) for effect in batch],
                    origin=self.session.origin or "",
                    collection_name=self.collection_name,
                    same_version_is_noop=self.session.g3,
                )
            except Exception:
                self.applies.clear()
                reference = uuid.uuid4().hex[:12]
                logger.exception("applying pushed changes failed (reference %s)", reference)
                await self.run(
                    self.session.fail(DataGateError(ErrorCode.INTERNAL, reference=reference))
                )
                return
            for effect, result in zip(batch, results, strict=True):
                metrics.push_record(applied=result.applied, rejected=len(result.rejected))
                self.pushed = self.pushed or result.applied > 0
                reply = effect.reply
                if not effect.receipt_in_reply:
                    reply = {**reply, "receipt": result.receipt()}
                self.session.push_applied(
                    feed=effect.feed, refused_ids={r.doc_id for r in result.rejected}
                )
                await self._send_text(encode(reply))

    async def _authenticate(self, effect: mc.Authenticate) -> list[mc.Effect]:
        connect = effect.connect
        client = self.scope.get("client") or ("", 0)
        access_before = access_baseline()  # read before the decision: consumer_access.py
        try:
            grant = await database_sync_to_async(session_open)(
                tenant_slug=self.tenant_slug,
                collection_name=self.collection_name,
                url_user=self.url_user,
                raw_token=connect.authToken,
                origin=self.session.origin or "",
                replica_name=connect.replicaName or "",
                address=str(client[0] or ""),
                polling=self.session.g3,
            )
        except DataGateError as error:
            return self.session.connect_refused(error)
        view_name = self.url_view or connect.view
        if view_name is not None:
            if self.url_view is not None and connect.view not in (None, self.url_view):
                mismatch = DataGateError(
                    ErrorCode.INVALID_MESSAGE,
                    message_type=connect.message_type,
                    detail="view: the Connect names another view than the URL",
                )
                return self.session.connect_refused(mismatch)
            try:
                self.view = await database_sync_to_async(data_views.view_session_open)(
                    user=grant.user,
                    tenant=grant.tenant,
                    collection_id=grant.collection_id,
                    name=view_name,
                )
            except DataGateError as refused:
                return self.session.connect_refused(refused)
            self.session.view = view_name
        self.connect_timer.cancel()
        self.grant = grant
        await self.feeds.attach_replica(self, replica_pk=grant.replica_pk)
        # Keep the decision true while the session lives (token refresh, periodic re-check).
        self.access = SessionAccess(self, scopes=grant.scopes, baseline=access_before)
        self._spawn(self.access.watch())
        if self.closed:  # the socket went away while we were authenticating
            await self._clean_up()
            return []
        return self.session.connect_accepted(
            user_name=grant.user_name,
            read_only=not grant.may_push,
            end_markers=Markers(
                grant.last_seq, grant.epoch if self.view is None else self.view.epoch
            ),
            purge_seq=grant.purge_seq,
        )

    def _fresh_pull(self) -> bool:
        """A pull from zero markers or a reset snapshot, with nothing pushed in the session:
        the replica holds nothing of the view yet, so nothing needs removing."""
        pull = self.session.pull
        return not self.pushed and pull is not None and pull.start.seq == 0

    def _feed(self, changes: list[Change]) -> dict[str, Any]:
        """The wire feed of `changes`, without those the user may not read (markers still
        advance over them: the caller passes the unfiltered count and range)."""
        read_filter = self.grant.read_filter if self.grant is not None else None
        if self.view is not None:
            return data_views.view_feed(
                changes, selector=self.view.selector, read_filter=read_filter
            )
        if read_filter is not None:
            changes = [change for change in changes if read_filter(change.doc_id)]
        return selectors.feed_from_changes(changes)

    async def _unservable(self, skipped: list[tuple[str, str]]) -> None:
        """Stored documents left out of a frame (DG-5005): an error event, never a close."""
        grant = self.grant
        if grant is None:
            return
        metrics.error_record(code=ErrorCode.UNSERVABLE_SKIPPED.code)
        try:
            await database_sync_to_async(unservable_record)(
                collection_id=grant.collection_id,
                skipped=skipped,
                via="websocket",
                user_id=grant.user.pk,
                replica_pk=grant.replica_pk,
            )
        except Exception:
            logger.warning("could not record the documents left out", exc_info=True)

    async def _report(self, error: DataGateError) -> None:
        metrics.error_record(code=error.code)
        await self._send_text(encode(self.session.error_message(error)))
        grant = self.grant
        try:
            await database_sync_to_async(error_event_record)(
                error=error,
                user_id=grant.user.pk if grant is not None else None,
                replica_pk=grant.replica_pk if grant is not None else None,
                tenant=self.tenant_slug,
                collection=self.collection_name,
                context={"state": self.session.state.value, "origin": self.session.origin or ""},
            )
        except Exception:
            logger.warning("could not record error event %s", error.code, exc_info=True)

    async def _send_text(self, text: str) -> None:
        if not self.closed:
            metrics.bytes_record(direction="out", count=len(text))
            await self.base_send({"type": "websocket.send", "text": text})

    async def _close(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        await self.base_send({"type": "websocket.close", "code": int(code)})
        await self._clean_up()

    async def _clean_up(self) -> None:
        if self.cleaned_up:
            return
        self.cleaned_up = True
        metrics.connection_closed(endpoint="sync")
        timer = getattr(self, "connect_timer", None)
        if timer is not None:
            timer.cancel()
        self.hub.unregister(self)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        grant = self.grant
        if grant is None:
            return
        self.feeds.detach_replica(self, replica_pk=grant.replica_pk)
        if self.live_joined:
            await self.feeds.leave(self, collection_id=grant.collection_id)
        await database_sync_to_async(replica_disconnected)(
            replica_pk=grant.replica_pk, acked_seq=self.feeds.take_ack(grant.replica_pk)
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- what the live hub calls -----------------------------------------------------------

    async def offer(self, block: FeedBlock) -> bool:
        """A new block of the collection's feed: send it (True), or catch up on it later."""
        if self.closed or self.grant is None:
            return False
        effects = self.session.offer_feed(
            start=block.start,
            end=block.end,
            shareable=self.grant.read_filter is None,
            now=self.loop.time(),
        )
        rest: list[mc.Effect] = []
        shared = False
        for effect in effects:
            if isinstance(effect, mc.SendShared):
                metrics.feed_record()
                body = block.body if self.view is None else block.view_body(self.view)
                await self._send_text(splice(effect.header, body))
                shared = True
            else:
                rest.append(effect)
        if rest:  # a database read: not on the hub's path
            self._spawn(self.run(rest))
        return shared

    def tick(self, now: float) -> None:
        effects = self.session.tick(now=now)
        if effects:
            self._spawn(self.run(effects))

    async def shut_down(self, retry_after_ms: int | None = None) -> None:
        await self.run(self.session.shutdown(retry_after_ms))

    async def disconnect_requested(self) -> None:
        """An operator asked (console, replication/doorbell.py): Disconnect, close 1000."""
        await self.run(self.session.disconnect())
