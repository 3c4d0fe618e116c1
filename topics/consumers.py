"""The websocket endpoint `/ws/topics/{tenant}/` (docs/protocol.md section 7): a thin shell.

Each frame goes through the pure `TopicSession` (topics/protocol.py); the typed message is
handed to its handler, whose database work is one `database_sync_to_async` call into
`topics.requests`. Delivery: every subscription has a `SubscriptionWindow`; the process's
`TopicFeeds` (on the process hub, `core.hub`) rings `_on_topic_moved` when a topic moves, and
one pump task per connection reads from the database what the windows allow and sends it.
Nothing is queued in memory beyond a window: the database is the truth and a lost bell only
waits for the hub's poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core.consumer_dispatch import DirectDispatchMixin
from core.daphne_websocket import OVERSIZED, install_close_handling
from core.errors import CloseCode, DataGateError, ErrorCode, fatal_close_code
from core.hub import process_hub
from topics import protocol
from topics.doorbell import DELETED, TopicFeeds, topic_feeds
from topics.protocol import Inbound, State, SubscriptionWindow, TopicSession
from topics.requests import (
    Caller,
    request_connect,
    request_error_record,
    request_messages_publish,
    request_offset_commit,
    request_subscribe,
    request_subscribe_position,
    request_topic_create,
    request_topic_delete,
    request_topics_list,
)
from topics.selectors import messages_read
from topics.services import Publication

logger = logging.getLogger(__name__)

install_close_handling()  # 1009 for a frame too large

# Not a configured alias: Channels then gives the consumer no layer channel of its own (no
# Redis receive loop per socket). Subscribers hear about topics through the process's hub.
NO_CHANNEL_LAYER = "datagate.topics-listen-through-the-hub"


class TopicsConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):
    channel_layer_alias = NO_CHANNEL_LAYER

    async def connect(self) -> None:
        knobs = settings.DATAGATE
        self.tenant_slug: str = self.scope["url_route"]["kwargs"]["tenant"]
        self.session = TopicSession(
            tenant=self.tenant_slug,
            server_id=str(knobs["SERVER_ID"]),
            max_publish=int(knobs["TOPIC_MAX_PUBLISH"]),
        )
        self.max_frame = int(knobs["MAX_FRAME_BYTES"])
        self.commit_share = float(knobs["TOPIC_COMMIT_SHARE"])
        self.caller: Caller | None = None
        self.windows: dict[str, SubscriptionWindow] = {}
        self.hub: TopicFeeds | None = None
        self.pump_task: asyncio.Task[None] | None = None
        self.pump_again = False
        self.handlers: dict[str, Callable[[Inbound], Awaitable[None]]] = {
            protocol.CONNECT: self.on_connect,
            protocol.LIST: self.on_list,
            protocol.CREATE: self.on_create,
            protocol.DELETE: self.on_delete,
            protocol.PUBLISH: self.on_publish,
            protocol.SUBSCRIBE: self.on_subscribe,
            protocol.COMMIT: self.on_commit,
            protocol.UNSUBSCRIBE: self.on_unsubscribe,
            protocol.DISCONNECT: self.on_disconnect_message,
        }
        await self.accept()
        # The process hub knows every session of the process, so that on SIGTERM each
        # gets a Disconnect and close 1001 (shut_down below) before daphne stops.
        self.process_sessions = process_hub()
        self.process_sessions.register(self)
        self.timeout_task = asyncio.create_task(
            self._connect_timeout(float(knobs["CONNECT_TIMEOUT"]))
        )

    async def disconnect(self, code: int) -> None:
        self.session.close()
        self.process_sessions.unregister(self)
        self.timeout_task.cancel()
        if self.pump_task is not None:
            self.pump_task.cancel()
        for window in list(self.windows.values()):
            await self._leave(window)
        self.windows.clear()

    # --- frames in ------------------------------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        # A message over the limit that daphne read and dropped (core/daphne_websocket.py) comes
        # with its size only.
        oversized = message.get(OVERSIZED)
        if oversized is not None:
            await self.fail(
                DataGateError(
                    ErrorCode.FRAME_TOO_LARGE, fatal=True, size=int(oversized), limit=self.max_frame
                )
            )
            return
        await super().websocket_receive(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame: str | bytes = text_data if text_data is not None else (bytes_data or b"")
        if len(frame) > self.max_frame:
            await self.fail(
                DataGateError(
                    ErrorCode.FRAME_TOO_LARGE, fatal=True, size=len(frame), limit=self.max_frame
                )
            )
            return
        inbound = self.session.receive(frame)
        if inbound.error is not None:
            await self.fail(inbound.error, inbound.correlation_id)
            return
        assert inbound.message_type is not None
        try:
            await self.handlers[inbound.message_type](inbound)
        except DataGateError as exc:
            await self.fail(
                exc, inbound.correlation_id, topic=getattr(inbound.message, "topic", "")
            )
        except Exception:
            reference = uuid.uuid4().hex[:12]
            logger.exception("topics: internal error, reference %s", reference)
            await self.fail(
                DataGateError(ErrorCode.INTERNAL, fatal=True, reference=reference),
                inbound.correlation_id,
            )

    async def on_connect(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Connect) and inbound.header is not None
        self.caller = await database_sync_to_async(request_connect)(
            raw_token=message.authToken, tenant_slug=self.tenant_slug, device=message.device
        )
        self.timeout_task.cancel()
        self.session.connected(
            user_name=self.caller.user_name,
            transaction_id=inbound.header.transactionId or str(uuid.uuid4()),
        )
        self.hub = topic_feeds()
        await self.reply(
            protocol.CONNECT_ACK,
            inbound,
            device=message.device,
            pageSize=int(settings.DATAGATE["TOPIC_PAGE_SIZE"]),
            commitShare=self.commit_share,
            maxPublish=self.session.max_publish,
            capabilities=["live"],
        )

    async def on_list(self, inbound: Inbound) -> None:
        topics = await database_sync_to_async(request_topics_list)(caller=self.caller)
        await self.reply(protocol.LIST_ACK, inbound, topics=topics)

    async def on_create(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Create)
        info = await database_sync_to_async(request_topic_create)(
            caller=self.caller,
            name=message.topic,
            scope=message.scope,
            page_size=message.pageSize,
            retention_days=message.retentionDays,
            retention_count=message.retentionCount,
        )
        await self.reply(protocol.CREATE_ACK, inbound, topic=info)

    async def on_delete(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Delete)
        await database_sync_to_async(request_topic_delete)(caller=self.caller, name=message.topic)
        window = self.windows.pop(message.topic, None)
        if window is not None:
            await self._leave(window)
        await self.reply(protocol.DELETE_ACK, inbound, topic=message.topic)

    async def on_publish(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Publish)
        publications = [Publication(m.messageId, m.payload) for m in message.messages]
        offsets, _ = await database_sync_to_async(request_messages_publish)(
            caller=self.caller, name=message.topic, messages=publications
        )
        await self.reply(protocol.PUBLISH_ACK, inbound, topic=message.topic, offsets=offsets)

    async def on_subscribe(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Subscribe) and self.hub is not None
        name = message.topic
        if name in self.windows:
            raise DataGateError(ErrorCode.ALREADY_SUBSCRIBED, topic=name)
        topic_id = await database_sync_to_async(request_subscribe)(caller=self.caller, name=name)
        start_from: str | tuple[int, int | None]
        if isinstance(message.start_from, protocol.Range):
            start_from = (message.start_from.start, message.start_from.end)
        else:
            start_from = message.start_from
        # Listen first, then read the position: a bell between the two is not missed.
        await self.hub.join(topic_id, self._on_topic_moved)
        try:
            position = await database_sync_to_async(request_subscribe_position)(
                caller=self.caller,
                name=name,
                topic_id=topic_id,
                start_from=start_from,
                batch_size=message.batchSize,
            )
        except BaseException:
            await self.hub.leave(topic_id, self._on_topic_moved)
            raise
        self.windows[name] = SubscriptionWindow(
            topic=name,
            topic_id=topic_id,
            batch_size=position.batch_size,
            commit_share=self.commit_share,
            next_offset=position.next_offset,
            floor=position.next_offset - 1,
            known_last=position.last_offset,
            end=position.end,
        )
        await self.reply(
            protocol.SUBSCRIBE_ACK,
            inbound,
            topic=name,
            nextOffset=position.next_offset,
            end=position.end,
            committed=position.committed,
            lastOffset=position.last_offset,
            batchSize=position.batch_size,
        )
        self.wake()

    async def on_commit(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Commit)
        window = self.windows.get(message.topic)
        try:
            offset = await database_sync_to_async(request_offset_commit)(
                caller=self.caller,
                name=message.topic,
                topic_id=window.topic_id if window is not None else None,
                offset=message.offset,
            )
        except DataGateError as exc:
            if exc.error is ErrorCode.COMMIT_REGRESSION and window is not None:
                # Refused, but the client has processed these: the window moves on.
                window.committed(message.offset)
                self.wake()
            raise
        await self.reply(protocol.COMMIT_ACK, inbound, topic=message.topic, offset=offset)
        if window is not None:
            window.committed(offset)
            self.wake()

    async def on_unsubscribe(self, inbound: Inbound) -> None:
        message = inbound.message
        assert isinstance(message, protocol.Unsubscribe)
        window = self.windows.pop(message.topic, None)
        if window is None:
            raise DataGateError(ErrorCode.NOT_SUBSCRIBED, topic=message.topic)
        await self._leave(window)
        await self.reply(protocol.UNSUBSCRIBE_ACK, inbound, topic=message.topic)

    async def on_disconnect_message(self, inbound: Inbound) -> None:
        self.session.close()
        await self.close(code=int(CloseCode.NORMAL))

    # --- delivery -------------------------------------------------------------------------

    def _on_topic_moved(self, topic_id: int, offset: int) -> None:
        for window in self.windows.values():
            if window.topic_id != topic_id:
                continue
            if offset == DELETED:
                window.maybe_deleted = True
            else:
                window.heard(offset)
        self.wake()

    def wake(self) -> None:
        if self.pump_task is not None and not self.pump_task.done():
            self.pump_again = True
            return
        self.pump_task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        """Send what the windows allow, reading from the database, until nothing is due."""
        try:
            while True:
                self.pump_again = False
                for name, window in list(self.windows.items()):
                    await self._pump_one(name, window)
                if not self.pump_again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            reference = uuid.uuid4().hex[:12]
            logger.exception("topics: delivery failed, reference %s", reference)
            await self.fail(DataGateError(ErrorCode.INTERNAL, fatal=True, reference=reference))

    async def _pump_one(self, name: str, window: SubscriptionWindow) -> None:
        limit = window.read_limit()
        if not limit and not window.maybe_deleted:
            return
        window.maybe_deleted = False
        found = await database_sync_to_async(messages_read)(
            topic_id=window.topic_id, from_offset=window.next_offset, limit=limit, up_to=window.end
        )
        if self.windows.get(name) is not window:
            return  # unsubscribed while reading
        if found is None:
            del self.windows[name]
            await self._leave(window)
            await self.fail(DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=name), topic=name)
            return
        messages, last_offset = found
        if not limit:  # only checked that the topic still exists
            window.heard(last_offset)
            return
        window.delivered([m.offset for m in messages], last_offset)
        if messages or window.finished:
            frame = self.session.outbound(
                protocol.MESSAGES,
                topic=name,
                messages=[m.to_wire() for m in messages],
                lastOffset=last_offset,
                final=window.finished,
            )
            await self.send(text_data=json.dumps(frame, separators=(",", ":")))
        if window.finished:
            del self.windows[name]
            await self._leave(window)
        elif window.read_limit():
            self.pump_again = True

    async def _leave(self, window: SubscriptionWindow) -> None:
        await self._leave_if_unused(window.topic_id)

    async def _leave_if_unused(self, topic_id: int) -> None:
        if self.hub is None:
            return
        if any(w.topic_id == topic_id for w in self.windows.values()):
            return
        await self.hub.leave(topic_id, self._on_topic_moved)

    # --- server shutdown (called by the process hub, core.hub) ----------------------------

    async def shut_down(self, retry_after_ms: int | None = None) -> None:
        if self.session.state is not protocol.State.CLOSED:
            self.session.close()
            hint = {} if retry_after_ms is None else {"retryAfterMs": retry_after_ms}
            with contextlib.suppress(Exception):
                await self.reply_uncorrelated(protocol.DISCONNECT, **hint)
            await self.close(code=int(CloseCode.GOING_AWAY))

    # --- frames out -----------------------------------------------------------------------

    async def reply(self, message_type: str, inbound: Inbound, **body: Any) -> None:
        frame = self.session.outbound(message_type, correlation_id=inbound.correlation_id, **body)
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def reply_uncorrelated(self, message_type: str, **body: Any) -> None:
        frame = self.session.outbound(message_type, **body)
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def fail(
        self, error: DataGateError, correlation_id: str | None = None, topic: str = ""
    ) -> None:
        """Send an error (recorded as an error event); close the socket if it is fatal."""
        with contextlib.suppress(Exception):
            await database_sync_to_async(request_error_record)(
                error=error, caller=self.caller, tenant=self.tenant_slug, topic=topic
            )
        frame = self.session.error_message(error, correlation_id=correlation_id, topic=topic)
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))
        if error.fatal:
            close = fatal_close_code(error, before_connect_ack=self.session.state is State.OPEN)
            self.session.close()
            await self.close(code=int(close))

    async def _connect_timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.caller is None:
            await self.fail(DataGateError(ErrorCode.CONNECT_TIMEOUT, fatal=True, seconds=seconds))
