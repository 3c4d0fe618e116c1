"""A small replica that speaks the DataGate protocol, for tests (docs/protocol.md).

`WireReplica` keeps a local store (documents, tombstones, the server markers it last stored)
and talks over any `Transport`: a real socket (`WebsocketsTransport`, with the `websockets`
library against a real daphne) or Channels' `WebsocketCommunicator` (`CommunicatorTransport`).
It is deliberately plain: no retries, no background tasks. Tests drive it step by step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from replication.protocol.messages import (
    BATCH_ACK,
    BATCH_CONTINUE,
    BATCH_END,
    BATCH_END_ACK,
    BATCH_START,
    CONNECT,
    CONNECT_ACK,
    DISCONNECT,
    ERROR,
    FEED,
    FEED_ACK,
)

ZERO_MARKERS = {"collectionMarker": 0, "tombstoneMarker": 0}


class Closed(Exception):
    """The server closed the socket; `code` is the close code (None if unknown)."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        super().__init__(f"socket closed with {code}")


class Transport(Protocol):
    async def send(self, text: str) -> None: ...

    async def recv(self, timeout: float) -> str:
        """The next text frame; raises Closed when the server closed, TimeoutError if none."""
        ...

    async def nothing(self, timeout: float) -> bool:
        """True when no frame arrives within `timeout` (a frame that does arrive is lost)."""
        ...

    async def close(self) -> None: ...


class WebsocketsTransport:
    def __init__(self, socket: Any) -> None:
        self.socket = socket

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WebsocketsTransport:
        import websockets

        kwargs.setdefault("max_size", 64 * 1024 * 1024)
        return cls(await websockets.connect(url, open_timeout=20, **kwargs))

    async def send(self, text: str) -> None:
        await self.socket.send(text)

    async def recv(self, timeout: float) -> str:
        import websockets

        try:
            frame = await asyncio.wait_for(self.socket.recv(), timeout)
        except websockets.ConnectionClosed as closed:
            raise Closed(closed.rcvd.code if closed.rcvd else None) from None
        return frame if isinstance(frame, str) else frame.decode()

    async def nothing(self, timeout: float) -> bool:
        try:
            await self.recv(timeout)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        await self.socket.close()


class CommunicatorTransport:
    def __init__(self, communicator: Any) -> None:
        self.communicator = communicator

    async def send(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def recv(self, timeout: float) -> str:
        output = await self.communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            raise Closed(output.get("code"))
        return str(output["text"])

    async def nothing(self, timeout: float) -> bool:
        # receive_output's timeout would cancel the application; this one does not.
        return bool(await self.communicator.receive_nothing(timeout))

    async def close(self) -> None:
        await self.communicator.disconnect()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class WireReplica:
    """A replica of one collection: a local store plus the conversation with the server."""

    transport: Transport
    token: str
    tenant: str
    collection: str
    origin: str = field(default_factory=lambda: f"replica-{uuid.uuid4().hex[:8]}")
    capabilities: list[str] = field(default_factory=lambda: ["live"])
    timeout: float = 20.0
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    markers: dict[str, int] = field(default_factory=lambda: dict(ZERO_MARKERS))
    journal: dict[str, dict[str, Any] | int] = field(default_factory=dict)
    transaction_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    user_name: str | None = None
    connect_ack: dict[str, Any] | None = None
    feeds: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    # --- frames -----------------------------------------------------------------------------

    def header(self, message_type: str, correlation_id: str | None = None) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "transactionId": self.transaction_id,
            "correlationId": correlation_id,
            "tenant": self.tenant,
            "collection": self.collection,
            "userName": self.user_name,
            "timestamp": now_ms(),
            "messageType": message_type,
            "origin": self.origin,
        }

    def message(
        self, message_type: str, correlation_id: str | None = None, **body: Any
    ) -> dict[str, Any]:
        return {"header": self.header(message_type, correlation_id), **body}

    async def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        await self.transport.send(text)

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; errors are remembered in `errors` and returned like the rest."""
        message: dict[str, Any] = json.loads(await self.transport.recv(timeout or self.timeout))
        if message["header"]["messageType"] == ERROR:
            self.errors.append(message)
        return message

    async def expect(self, message_type: str, timeout: float | None = None) -> dict[str, Any]:
        message = await self.receive(timeout)
        got = message["header"]["messageType"]
        assert got == message_type, f"expected {message_type}, got {got}: {message}"
        return message

    async def expect_nothing(self, timeout: float = 0.5) -> None:
        assert await self.transport.nothing(timeout), "a message arrived"

    async def expect_close(self, timeout: float | None = None) -> int | None:
        """Read (and keep) messages until the server closes; return the close code."""
        try:
            while True:
                await self.receive(timeout)
        except Closed as closed:
            return closed.code

    # --- the session ------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        await self.send(
            self.message(
                CONNECT,
                authToken=self.token,
                replicaName=self.origin,
                capabilities=self.capabilities,
            )
        )
        ack = await self.expect(CONNECT_ACK)
        self.user_name = ack["header"]["userName"]
        self.connect_ack = ack
        return ack

    def put(self, doc_id: str, **fields: Any) -> dict[str, Any]:
        """Write a document locally (journalled for the next push)."""
        held = self.documents.get(doc_id)
        doc = {
            **fields,
            "_id": doc_id,
            "_revision": (held["_revision"] + 1) if held else 1,
            "_modified": max(now_ms(), (held["_modified"] + 1) if held else 0),
            "_origin": self.origin,
        }
        self.documents[doc_id] = doc
        self.tombstones.pop(doc_id, None)
        self.journal[doc_id] = doc
        return doc

    def delete(self, doc_id: str) -> None:
        held = self.documents.pop(doc_id, None)
        stamp = max(now_ms(), (held["_modified"] + 1) if held else 0)
        self.tombstones[doc_id] = stamp
        self.journal[doc_id] = stamp

    def journal_feed(self) -> dict[str, Any]:
        return {
            "changeSet": [v for v in self.journal.values() if isinstance(v, dict)],
            "tombstoneMap": {k: v for k, v in self.journal.items() if isinstance(v, int)},
        }

    async def push(self, chunk_size: int = 100) -> list[dict[str, Any]]:
        """Push the journal in chunks; drop what the server processed. Returns the acks."""
        items = list(self.journal.items())
        acks = []
        for index in range(0, len(items), chunk_size):
            part = items[index : index + chunk_size]
            feed = {
                "changeSet": [v for _, v in part if isinstance(v, dict)],
                "tombstoneMap": {k: v for k, v in part if isinstance(v, int)},
            }
            message_type = BATCH_START if index == 0 else BATCH_CONTINUE
            sent = self.message(
                message_type,
                feed=feed,
                nextOffset=index + len(part),
                batchSize=chunk_size,
                startMarkers=None,
                endMarkers=None,
            )
            await self.send(sent)
            ack = await self.expect(BATCH_ACK)
            assert ack["header"]["correlationId"] == sent["header"]["id"]
            self.forget(ack["receipt"])
            acks.append(ack)
        return acks

    def forget(self, receipt: dict[str, Any]) -> None:
        for doc_id in receipt["added"] + receipt["removed"]:
            self.journal.pop(doc_id, None)

    def apply_feed(self, feed: dict[str, Any]) -> None:
        """Apply the server's changes to the local store (last writer by _modified wins)."""
        for doc in feed.get("changeSet", []):
            held = self.documents.get(doc["_id"])
            tomb = self.tombstones.get(doc["_id"])
            if tomb is not None and tomb >= doc["_modified"]:
                continue
            if held is None or (held["_modified"], held["_revision"], held["_origin"]) <= (
                doc["_modified"],
                doc["_revision"],
                doc["_origin"],
            ):
                self.documents[doc["_id"]] = doc
                self.tombstones.pop(doc["_id"], None)
        for doc_id, stamp in feed.get("tombstoneMap", {}).items():
            held = self.documents.get(doc_id)
            if held is None or held["_modified"] <= stamp:
                self.documents.pop(doc_id, None)
                self.tombstones[doc_id] = max(stamp, self.tombstones.get(doc_id, 0))

    async def pull(self, batch_size: int = 500) -> dict[str, Any]:
        """End the push and pull everything after the stored markers; store the end markers.

        Returns {"chunks": [...], "reset": bool, "end": batch.end message}.
        """
        end_push = self.message(
            BATCH_END, startMarkers=self.markers, endMarkers=None, batchSize=batch_size
        )
        await self.send(end_push)
        await self.expect(BATCH_END_ACK)
        chunks = []
        reset = False
        while True:
            message = await self.receive()
            message_type = message["header"]["messageType"]
            if message_type == BATCH_END:
                break
            assert message_type in (BATCH_START, BATCH_CONTINUE), message
            if message.get("reset"):
                reset = True
                self.reset_to_snapshot()
            chunks.append(message)
            self.apply_feed(message["feed"])
            await self.send(
                self.message(
                    BATCH_ACK,
                    message["header"]["id"],
                    receipt=self.receipt_for(message["feed"]),
                    nextOffset=message["nextOffset"],
                    batchSize=message["batchSize"],
                    startMarkers=message["startMarkers"],
                    endMarkers=message["endMarkers"],
                )
            )
        self.markers = dict(message["endMarkers"])
        await self.send(
            self.message(
                BATCH_END_ACK,
                message["header"]["id"],
                startMarkers=message["startMarkers"],
                endMarkers=message["endMarkers"],
            )
        )
        return {"chunks": chunks, "reset": reset, "end": message}

    def reset_to_snapshot(self) -> None:
        self.documents = {k: v for k, v in self.documents.items() if k in self.journal}
        self.tombstones = {k: v for k, v in self.tombstones.items() if k in self.journal}

    @staticmethod
    def receipt_for(feed: dict[str, Any]) -> dict[str, Any]:
        return {
            "added": [d["_id"] for d in feed.get("changeSet", [])],
            "removed": list(feed.get("tombstoneMap", {})),
            "rejected": [],
        }

    async def sync(self) -> dict[str, Any]:
        """Connect, push the journal, pull: the replica is then live (with `live`)."""
        await self.connect()
        await self.push()
        return await self.pull()

    async def next_feed(self, timeout: float | None = None, ack: bool = True) -> dict[str, Any]:
        """Wait for the next server feed, apply it, store its end markers and ack it."""
        while True:
            message = await self.receive(timeout)
            if message["header"]["messageType"] == FEED:
                break
            if message["header"]["messageType"] != FEED_ACK:
                raise AssertionError(f"expected a feed, got {message}")
        self.feeds.append(message)
        self.apply_feed(message["feed"])
        assert message["startMarkers"]["collectionMarker"] == self.markers["collectionMarker"], (
            f"gap: feed starts at {message['startMarkers']}, replica holds {self.markers}"
        )
        self.markers = dict(message["endMarkers"])
        if ack:
            await self.send(
                self.message(
                    FEED_ACK, message["header"]["id"], receipt=self.receipt_for(message["feed"])
                )
            )
        return message

    async def feed_until(self, seq: int, timeout: float | None = None) -> list[dict[str, Any]]:
        """Receive feeds until the stored collectionMarker reaches `seq`."""
        got = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.markers["collectionMarker"] < seq:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"replica at {self.markers}, waiting for {seq}")
            got.append(await self.next_feed(timeout=left))
        return got

    async def send_feed(self) -> dict[str, Any]:
        """Send the journal as a live feed; wait for its feed.ack (server feeds are kept)."""
        sent = self.message(FEED, feed=self.journal_feed())
        await self.send(sent)
        while True:
            message = await self.receive()
            message_type = message["header"]["messageType"]
            if (
                message_type == FEED_ACK
                and message["header"]["correlationId"] == sent["header"]["id"]
            ):
                self.forget(message["receipt"])
                return message
            if message_type == FEED:
                self.feeds.append(message)
                self.apply_feed(message["feed"])
                self.markers = dict(message["endMarkers"])
                await self.send(
                    self.message(
                        FEED_ACK, message["header"]["id"], receipt=self.receipt_for(message["feed"])
                    )
                )
                continue
            raise AssertionError(f"expected feed.ack, got {message}")

    async def disconnect(self) -> int | None:
        await self.send(self.message(DISCONNECT))
        return await self.expect_close()

    def state(self) -> dict[str, Any]:
        """Comparable local state: each document's fields and meta, and each tombstone."""
        return {
            "documents": {k: dict(v) for k, v in sorted(self.documents.items())},
            "tombstones": dict(sorted(self.tombstones.items())),
        }
