"""A client for DataGate topics (the server's docs/protocol.md, section 7), over `websockets`.

    async with TopicsClient("ws://127.0.0.1:8000", tenant="acme", token=token,
                            device="laptop") as client:
        await client.publish("news", [{"title": "hello"}])
        async with client.subscribe("news", start="committed") as subscription:
            async for message in subscription:
                handle(message.payload)
                await message.commit()

Offsets are kept per (topic, user, device) on the server: a subscriber that reconnects from
`committed` gets again every message it had not committed. The server sends the next batch
once enough of the previous one is committed, so a subscriber that never commits receives one
batch and then waits. This module imports nothing of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

from datagate_replica.sync import describe_close

PREFIX = "datagate.topic."
REGRESSION = "DG-6007"


class TopicError(Exception):
    """An error the server reported: `code` (DG-NNNN), its text, and whether it was fatal."""

    def __init__(self, code: str, text: str, fatal: bool = False) -> None:
        self.code = code
        self.text = text
        self.fatal = fatal
        super().__init__(text)


@dataclass
class TopicMessage:
    topic: str
    offset: int
    message_id: str
    payload: Any
    publisher: str | None
    published_at: int
    subscription: Subscription | None = field(default=None, repr=False)

    async def commit(self) -> None:
        """Commit this message's offset (and so every earlier one) for this device."""
        if self.subscription is None:
            raise RuntimeError("this message did not come from a subscription")
        await self.subscription.commit(self.offset)


class Subscription:
    """An async iterator over a topic's messages; ends after a range's last message."""

    def __init__(
        self, client: TopicsClient, topic: str, body: dict[str, Any], auto_commit: bool
    ) -> None:
        self.client = client
        self.topic = topic
        self.body = body
        self.auto_commit = auto_commit
        self.next_offset = 0
        self.committed = 0
        self.last_offset = 0
        self.batch_size = 0
        self._queue: asyncio.Queue[TopicMessage | BaseException | None] = asyncio.Queue()
        self._uncommitted: int | None = None
        self._open = False

    async def start(self) -> Subscription:
        self.client._subscriptions[self.topic] = self
        try:
            ack = await self.client.request("subscribe", topic=self.topic, **self.body)
        except BaseException:
            self.client._subscriptions.pop(self.topic, None)
            raise
        self.next_offset = ack["nextOffset"]
        self.committed = ack["committed"]
        self.last_offset = ack["lastOffset"]
        self.batch_size = ack["batchSize"]
        self._open = True
        return self

    def _deliver(self, frame: dict[str, Any]) -> None:
        for item in frame.get("messages", []):
            self._queue.put_nowait(
                TopicMessage(
                    topic=self.topic,
                    offset=item["offset"],
                    message_id=item["messageId"],
                    payload=item.get("payload"),
                    publisher=item.get("publisher"),
                    published_at=item.get("publishedAt", 0),
                    subscription=self,
                )
            )
        self.last_offset = max(self.last_offset, frame.get("lastOffset", 0))
        if frame.get("final"):
            self._open = False
            self.client._subscriptions.pop(self.topic, None)
            self._queue.put_nowait(None)

    def _fail(self, error: BaseException) -> None:
        self._open = False
        self._queue.put_nowait(error)

    def __aiter__(self) -> AsyncIterator[TopicMessage]:
        return self

    async def __anext__(self) -> TopicMessage:
        if self.auto_commit and self._uncommitted is not None and self._queue.empty():
            # Everything handed out so far has been processed: commit before waiting.
            await self.commit(self._uncommitted)
        item = await self._queue.get()
        if item is None:
            if self.auto_commit and self._uncommitted is not None:
                await self.commit(self._uncommitted)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        self._uncommitted = item.offset
        return item

    async def commit(self, offset: int | None = None) -> None:
        """Commit `offset` (default: the last message handed out) for this device.

        An offset at or below what this device committed before is a replay: the server
        refuses it (DG-6007) but still lets the flow of messages go on, so it is not an error
        here.
        """
        offset = self._uncommitted if offset is None else offset
        if offset is None:
            return
        if self._uncommitted is not None and offset >= self._uncommitted:
            self._uncommitted = None
        try:
            await self.client.commit(self.topic, offset)
        except TopicError as exc:
            if exc.code != REGRESSION:
                raise
        self.committed = max(self.committed, offset)

    async def close(self) -> None:
        """Unsubscribe (nothing to do if a range subscription already ended)."""
        if self._open:
            self._open = False
            self.client._subscriptions.pop(self.topic, None)
            with contextlib.suppress(TopicError, ConnectionError):
                await self.client.request("unsubscribe", topic=self.topic)

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class TopicsClient:
    """One connection to `/ws/topics/{tenant}/` as one device of the token's user."""

    def __init__(
        self,
        url: str,
        *,
        tenant: str,
        token: str,
        device: str,
        origin: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        base = url.rstrip("/")
        if base.startswith("http"):
            base = "ws" + base[len("http") :]
        self.url = f"{base}/ws/topics/{tenant}/"
        self.tenant = tenant
        self.token = token
        self.device = device
        self.origin = origin or f"{device}-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.transaction_id = str(uuid.uuid4())
        self.user_name: str | None = None
        self.connect_ack: dict[str, Any] = {}
        self._socket: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._closed: BaseException | None = None

    # --- connection -----------------------------------------------------------------------

    async def connect(self) -> TopicsClient:
        self._socket = await websockets.connect(self.url, max_size=None, open_timeout=self.timeout)
        self._reader = asyncio.create_task(self._read())
        self.connect_ack = await self.request("connect", authToken=self.token, device=self.device)
        self.user_name = self.connect_ack["header"].get("userName")
        return self

    async def close(self) -> None:
        if self._socket is None:
            return
        with contextlib.suppress(Exception):
            await self._send("disconnect")
        with contextlib.suppress(Exception):
            await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._socket = None

    async def __aenter__(self) -> TopicsClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests -------------------------------------------------------------------------

    async def list_topics(self) -> list[dict[str, Any]]:
        return list((await self.request("list"))["topics"])

    async def create(
        self,
        topic: str,
        *,
        scope: str = "global",
        page_size: int | None = None,
        retention_days: int | None = None,
        retention_count: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"topic": topic, "scope": scope}
        for key, value in (
            ("pageSize", page_size),
            ("retentionDays", retention_days),
            ("retentionCount", retention_count),
        ):
            if value is not None:
                body[key] = value
        return dict((await self.request("create", **body))["topic"])

    async def delete(self, topic: str) -> None:
        await self.request("delete", topic=topic)

    async def publish(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        message_ids: Iterable[str] | None = None,
    ) -> list[int]:
        """Publish messages atomically; return their offsets.

        Give `message_ids` to make a retry safe: a repeated id gets its first offset back and
        is not stored twice. Without them each message gets a fresh UUID.
        """
        items = list(payloads)
        ids = list(message_ids) if message_ids is not None else [str(uuid.uuid4()) for _ in items]
        if len(ids) != len(items):
            raise ValueError("one message id per payload")
        messages = [{"messageId": i, "payload": p} for i, p in zip(ids, items, strict=True)]
        return list((await self.request("publish", topic=topic, messages=messages))["offsets"])

    def subscribe(
        self,
        topic: str,
        *,
        start: str | tuple[int, int | None] = "committed",
        batch_size: int | None = None,
        auto_commit: bool = False,
    ) -> Subscription:
        """A subscription; use `async with` (or `await sub.start()`), then `async for`.

        `start`: "committed" (default), "beginning", "latest", or (first, last) offsets
        (last may be None). With `auto_commit`, a batch is committed once all its messages
        were handed out and the next one is asked for.
        """
        body: dict[str, Any] = {}
        if isinstance(start, tuple):
            body["from"] = {"start": start[0], "end": start[1]}
        else:
            body["from"] = start
        if batch_size is not None:
            body["batchSize"] = batch_size
        if topic in self._subscriptions:
            raise ValueError(f"already subscribed to {topic!r} on this connection")
        return Subscription(self, topic, body, auto_commit)

    async def commit(self, topic: str, offset: int) -> int:
        return int((await self.request("commit", topic=topic, offset=offset))["offset"])

    async def request(self, message_type: str, **body: Any) -> dict[str, Any]:
        """Send a request and await its reply (raises TopicError for an error reply)."""
        if self._closed is not None:
            raise ConnectionError(f"connection closed: {self._closed}")
        message_id = str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._send(message_type, message_id=message_id, **body)
            return await asyncio.wait_for(future, self.timeout)
        finally:
            self._pending.pop(message_id, None)

    async def _send(self, message_type: str, message_id: str | None = None, **body: Any) -> None:
        header = {
            "id": message_id or str(uuid.uuid4()),
            "messageType": PREFIX + message_type,
            "transactionId": self.transaction_id,
            "tenant": self.tenant,
            "userName": self.user_name,
            "timestamp": time.time_ns() // 1_000_000,
            "origin": self.origin,
        }
        await self._socket.send(json.dumps({"header": header, **body}))

    async def _read(self) -> None:
        try:
            async for text in self._socket:
                self._dispatch(json.loads(text))
            close = self._socket.close_rcvd
            reason: BaseException = ConnectionError(
                describe_close(close.code if close else None, close.reason if close else "")
            )
        except ConnectionClosed as exc:
            reason = ConnectionError(
                describe_close(
                    exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
                )
            )
        except Exception as exc:
            reason = exc
        self._closed = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(reason)
        for subscription in list(self._subscriptions.values()):
            subscription._fail(reason)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        header = frame.get("header", {})
        message_type = header.get("messageType", "")
        if message_type == PREFIX + "messages":
            subscription = self._subscriptions.get(frame.get("topic", ""))
            if subscription is not None:
                subscription._deliver(frame)
            return
        future = self._pending.get(header.get("correlationId") or "")
        if message_type == PREFIX + "error":
            error = TopicError(
                frame.get("code", ""), frame.get("error", ""), bool(frame.get("fatal"))
            )
            if future is not None and not future.done():
                future.set_exception(error)
                return
            topic = frame.get("topic", "")
            if error.fatal:
                self._closed = error
                for pending in self._pending.values():
                    if not pending.done():
                        pending.set_exception(error)
                for subscription in list(self._subscriptions.values()):
                    subscription._fail(error)
            elif topic in self._subscriptions:
                self._subscriptions.pop(topic)._fail(error)
            return
        if future is not None and not future.done():
            future.set_result(frame)
