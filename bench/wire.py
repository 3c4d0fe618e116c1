"""A lightweight DataGate protocol client (PROTOCOL.md sections 2-4) for load generation.

The benchmarks need thousands of replicas in a few processes, so this client does as little
as the protocol allows: one header template per session, no local conflict rule, no retries.
It imports nothing of the server. The full replica (with its local database, journal and
conflict rule) is the SDK's job (`sdk/datagate_replica`); `catch_up` stores into SQLite here so
the figure includes storing locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import websockets

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

ZERO_MARKERS = {"collectionMarker": 0, "tombstoneMarker": 0}


class ProtocolFailure(Exception):
    """The server answered something this client did not expect (an error, a close)."""


async def open_socket(url: str, *, open_timeout: float = 60.0) -> Any:
    """A websocket with no compression and no client pings: the cheapest client there is."""
    return await websockets.connect(
        url,
        compression=None,
        ping_interval=None,
        max_size=None,
        open_timeout=open_timeout,
        close_timeout=5,
    )


def receipt_for(feed: dict[str, Any]) -> dict[str, Any]:
    return {
        "added": [doc["_id"] for doc in feed.get("changeSet") or ()],
        "removed": list(feed.get("tombstoneMap") or ()),
        "rejected": [],
    }


class Session:
    """One replica's conversation with the server on one socket."""

    def __init__(
        self, socket: Any, *, token: str, tenant: str, collection: str, origin: str | None = None
    ) -> None:
        self.socket = socket
        self.token = token
        self.origin = origin or f"bench-{uuid.uuid4().hex[:12]}"
        self.markers: dict[str, int] = dict(ZERO_MARKERS)
        self._header: dict[str, Any] = {
            "id": "",
            "transactionId": str(uuid.uuid4()),
            "correlationId": None,
            "tenant": tenant,
            "collection": collection,
            "userName": None,
            "timestamp": 0,
            "messageType": "",
            "origin": self.origin,
        }
        self._counter = 0

    @classmethod
    async def open(
        cls, url: str, *, token: str, tenant: str, collection: str, origin: str | None = None
    ) -> Session:
        return cls(
            await open_socket(url), token=token, tenant=tenant, collection=collection, origin=origin
        )

    # --- frames -------------------------------------------------------------------------------

    def message(
        self, message_type: str, correlation_id: str | None = None, **body: Any
    ) -> dict[str, Any]:
        self._counter += 1
        header = dict(self._header)
        header["id"] = f"{self.origin}-{self._counter}"
        header["correlationId"] = correlation_id
        header["timestamp"] = time.time_ns() // 1_000_000
        header["messageType"] = message_type
        return {"header": header, **body}

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message, separators=(",", ":")))

    async def receive(self, timeout: float) -> dict[str, Any]:
        try:
            frame = await asyncio.wait_for(self.socket.recv(), timeout)
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            raise ProtocolFailure(f"server closed the socket ({code})") from None
        message: dict[str, Any] = json.loads(frame)
        if message["header"]["messageType"] == ERROR:
            raise ProtocolFailure(f"server error: {message.get('error')}")
        return message

    async def expect(self, message_type: str, timeout: float) -> dict[str, Any]:
        message = await self.receive(timeout)
        got = message["header"]["messageType"]
        if got != message_type:
            raise ProtocolFailure(f"expected {message_type}, got {got}")
        return message

    # --- the session --------------------------------------------------------------------------

    async def connect(self, *, live: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        await self.send(
            self.message(
                CONNECT,
                authToken=self.token,
                replicaName=self.origin,
                capabilities=["live"] if live else [],
            )
        )
        ack = await self.expect(CONNECT_ACK, timeout)
        self._header["userName"] = ack["header"]["userName"]
        return ack

    async def push(
        self, docs: Sequence[dict[str, Any]], *, chunk: int, window: int, timeout: float = 120.0
    ) -> int:
        """Push `docs` in chunks with up to `window` chunks unacked; return ids processed."""
        processed = 0
        in_flight = 0
        sent = 0
        total = len(docs)
        while sent < total or in_flight:
            while sent < total and in_flight < window:
                part = docs[sent : sent + chunk]
                kind = BATCH_START if sent == 0 else BATCH_CONTINUE
                sent += len(part)
                await self.send(
                    self.message(
                        kind,
                        feed={"changeSet": list(part), "tombstoneMap": {}},
                        nextOffset=sent,
                        batchSize=chunk,
                        startMarkers=None,
                        endMarkers=None,
                    )
                )
                in_flight += 1
            ack = await self.expect(BATCH_ACK, timeout)
            receipt = ack["receipt"]
            processed += len(receipt["added"]) + len(receipt["removed"])
            if receipt["rejected"]:
                raise ProtocolFailure(f"server rejected: {receipt['rejected'][:3]}")
            in_flight -= 1
        return processed

    async def pull(
        self,
        *,
        batch_size: int = 500,
        store: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        timeout: float = 120.0,
    ) -> int:
        """End the push, pull every change after the stored markers (storing each chunk with
        `store` before acking it), store the end markers. Returns the documents received."""
        await self.send(
            self.message(
                BATCH_END, startMarkers=self.markers, endMarkers=None, batchSize=batch_size
            )
        )
        await self.expect(BATCH_END_ACK, timeout)
        received = 0
        while True:
            message = await self.receive(timeout)
            kind = message["header"]["messageType"]
            if kind == BATCH_END:
                break
            if kind not in (BATCH_START, BATCH_CONTINUE):
                raise ProtocolFailure(f"expected a pull chunk, got {kind}")
            feed = message["feed"]
            received += len(feed.get("changeSet") or ()) + len(feed.get("tombstoneMap") or ())
            if store is not None:
                stored = store(feed)
                if stored is not None:
                    await stored
            await self.send(
                self.message(
                    BATCH_ACK,
                    message["header"]["id"],
                    receipt=receipt_for(feed),
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
        return received

    async def feed_ack(self, message: dict[str, Any]) -> None:
        await self.send(
            self.message(FEED_ACK, message["header"]["id"], receipt=receipt_for(message["feed"]))
        )

    async def send_feed(self, docs: list[dict[str, Any]]) -> str:
        message = self.message(FEED, feed={"changeSet": docs, "tombstoneMap": {}})
        await self.send(message)
        return str(message["header"]["id"])

    async def close(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(self.send(self.message(DISCONNECT)), 5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.socket.close(), 10)


async def live_session(
    url: str, *, token: str, tenant: str, collection: str, origin: str | None = None
) -> Session:
    """A replica that is connected, has pulled, and is now live."""
    session = await Session.open(
        url, token=token, tenant=tenant, collection=collection, origin=origin
    )
    try:
        await session.connect(live=True)
        await session.pull()
    except BaseException:
        await session.socket.close()
        raise
    return session
