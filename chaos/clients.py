"""The clients of a chaos run, each recording what it attempted and what was acknowledged.

- `SdkClient`: the project's own replica SDK (`datagate_replica.AsyncReplica`) on a local file,
  live in the background, going offline for long periods (writing all the while), switching
  between daphnes, sometimes with a skewed clock.
- `WireClient`: a light client that speaks the wire protocol in short sessions (connect, push,
  pull, a few live feeds both ways, disconnect), as a phone that wakes up now and then does.
- `HttpWriter`: PUT and DELETE over the HTTP API.
- `Producer` and `Consumer`: topics over websockets; the consumers commit as they go, and one
  can be told to stop committing for a while.

All of them draw document ids from one small pool, so edits conflict and deletes hit documents
that others are editing. A value is `{"v": <unique token>, "by": <client>}`, so the checker can
tell every version apart. Between epochs the run calls `quiet()`: writers stop, every client
goes online, and convergence is measured against the server's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.history import History

TENANT = "demo"
COLLECTION = "chaos"
TOPIC = "chaos-events"
DOC_POOL = [f"doc-{n:02d}" for n in range(40)]
HOT = DOC_POOL[:6]  # edited by everyone, often
# Ids created as the run goes: a replica writes a fresh one (often while offline), and the
# HTTP writer deletes recent ones, which the server may not have heard of yet.
FRESH: list[str] = []


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pick_doc(rng: random.Random) -> str:
    return rng.choice(HOT) if rng.random() < 0.4 else rng.choice(DOC_POOL)


def fresh_doc(rng: random.Random) -> str:
    doc_id = f"fresh-{len(FRESH):05d}-{rng.randrange(1000):03d}"
    FRESH.append(doc_id)
    return doc_id


def recent_fresh(rng: random.Random) -> str | None:
    return rng.choice(FRESH[-5:]) if FRESH else None


def comparable(documents: dict[str, dict[str, Any]], tombstones: dict[str, int]) -> str:
    """One form for every client's state and the server's: what must be equal when converged."""
    state = {
        "documents": {
            k: [d["modified"], d["revision"], d["body"]] for k, d in sorted(documents.items())
        },
        "tombstones": dict(sorted(tombstones.items())),
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":"))


def differences(mine: str, server: str, limit: int = 3) -> str:
    """The first ids whose version differs between two `comparable` states, with both sides."""
    a, b = json.loads(mine), json.loads(server)
    found = []
    for kind in ("documents", "tombstones"):
        for doc_id in sorted(set(a[kind]) | set(b[kind])):
            if a[kind].get(doc_id) != b[kind].get(doc_id):
                found.append(f"{doc_id}: {a[kind].get(doc_id)} vs server {b[kind].get(doc_id)}")
    return f"{len(found)} differ: " + "; ".join(found[:limit])


def wire_body(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


class Base:
    def __init__(self, name: str, history: History, rng: random.Random) -> None:
        self.name = name
        self.history = history
        self.rng = rng
        self.quiet = asyncio.Event()  # set: no new writes
        self.errors = 0

    def token_value(self) -> dict[str, Any]:
        return {"v": uuid.uuid4().hex[:12], "by": self.name}

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))


# --- the SDK replica ------------------------------------------------------------------------


class SdkClient(Base):
    def __init__(
        self,
        name: str,
        history: History,
        rng: random.Random,
        *,
        urls: list[str],
        token: str,
        path: Path,
    ) -> None:
        from datagate_replica import AsyncReplica

        super().__init__(name, history, rng)
        self.urls = urls
        self.replica = AsyncReplica(
            urls[0],
            TENANT,
            COLLECTION,
            token,
            path=path,
            name=name,
            backoff_base=0.2,
            backoff_cap=2.0,
            reply_timeout=15.0,
            rng=random.Random(rng.random()),
        )
        self.origin = self.replica.replica_id
        self.online = False
        self.offline_until = 0.0
        self.skew_ms = 0
        self._switch = asyncio.Lock()
        self._hook()

    def _hook(self) -> None:
        from datagate_replica.clock import wall_clock_ms

        store = self.replica.store
        engine = self.replica.engine
        settle = store.settle

        def recording_settle(sent: Any, receipt: Any, *, at_ms: int = 0) -> Any:
            versions = {}
            for doc_id, change_no in sent.items():
                rows = store._read(
                    "SELECT kind, body, revision, modified, origin FROM journal "
                    "WHERE doc_id = ? AND change_no = ?",
                    (doc_id, change_no),
                )
                if rows:
                    versions[doc_id] = rows[0]
            result = settle(sent, receipt, at_ms=at_ms)
            for doc_id in [*(receipt.get("added") or []), *(receipt.get("removed") or [])]:
                row = versions.get(doc_id)
                if row is None:
                    continue
                kind, body, revision, modified, origin = row
                key = [modified, 1, 0, ""] if kind == 1 else [modified, 0, revision, origin]
                self.history.record(
                    "ack",
                    client=self.name,
                    doc=doc_id,
                    key=key,
                    value=None if body is None else json.loads(body),
                    via="sdk",
                )
            return result

        store.settle = recording_settle  # type: ignore[method-assign]

        def recording_message(message: Any) -> None:
            if message["header"]["messageType"] == "no2.sync.feed":
                self.history.record(
                    "feed",
                    client=self.name,
                    held=store.markers().seq,
                    start=(message.get("startMarkers") or {}).get("collectionMarker"),
                    end=(message.get("endMarkers") or {}).get("collectionMarker"),
                )

        engine.on_message = recording_message
        store.clock._now = lambda: wall_clock_ms() + self.skew_ms

    def skew(self, ms: int) -> None:
        self.skew_ms = ms

    async def go_online(self) -> None:
        async with self._switch:
            if not self.online:
                self.replica.engine.url = self.rng.choice(self.urls).rstrip("/")
                await self.replica.start()
                self.online = True

    async def go_offline(self) -> None:
        async with self._switch:
            if self.online:
                await self.replica.stop()
                self.online = False

    def write(self) -> None:
        doc_id = fresh_doc(self.rng) if self.rng.random() < 0.1 else pick_doc(self.rng)
        if self.rng.random() < 0.25:
            if self.replica.delete(doc_id):
                held = self.replica.store.held(doc_id)
                assert held is not None
                key = [held.modified, 1, 0, ""]
                self.history.record(
                    "op", client=self.name, doc=doc_id, key=key, value=None, via="sdk"
                )
            return
        value = self.token_value()
        doc = self.replica.put(doc_id, value)
        key = [doc["_modified"], 0, doc["_revision"], doc["_origin"]]
        self.history.record("op", client=self.name, doc=doc_id, key=key, value=value, via="sdk")

    async def run(self, stop: asyncio.Event) -> None:
        await self.go_online()
        while not stop.is_set():
            await self.pause(0.15, 0.6)
            if self.quiet.is_set():
                continue
            loop_now = time.monotonic()
            if self.online and self.rng.random() < 0.02:
                # A long offline period: it keeps writing to its journal meanwhile.
                self.offline_until = loop_now + self.rng.uniform(5, 30)
                await self.go_offline()
            elif not self.online and loop_now >= self.offline_until:
                await self.go_online()
            self.write()
        await self.go_offline()

    def state(self) -> str:
        raw = self.replica.store.state()
        return comparable(raw["documents"], raw["tombstones"])

    def pending(self) -> int:
        return self.replica.store.journal_size()


# --- the light wire client -------------------------------------------------------------------


class WireClient(Base):
    """Short sessions of the wire protocol, with a local store kept across them."""

    def __init__(
        self, name: str, history: History, rng: random.Random, *, urls: list[str], token: str
    ) -> None:
        super().__init__(name, history, rng)
        self.urls = urls
        self.token = token
        self.replica: Any = None
        self.origin = f"wire-{name}"
        self._one_session = asyncio.Lock()  # the run loop and the convergence check share it

    async def _open(self) -> Any:
        from tests.support.wire_replica import WebsocketsTransport, WireReplica

        url = f"{self.rng.choice(self.urls).rstrip('/')}/ws/datagate/{TENANT}/{COLLECTION}/"
        transport = await WebsocketsTransport.open(url, close_timeout=2)
        if self.replica is None:
            self.replica = WireReplica(
                transport=transport,
                token=self.token,
                tenant=TENANT,
                collection=COLLECTION,
                origin=self.origin,
                timeout=10.0,
            )
        else:
            self.replica.transport = transport
            self.replica.transaction_id = str(uuid.uuid4())
        return self.replica

    def write(self) -> None:
        replica = self.replica
        doc_id = pick_doc(self.rng)
        if self.rng.random() < 0.25 and doc_id in replica.documents:
            replica.delete(doc_id)
            key = [replica.tombstones[doc_id], 1, 0, ""]
            self.history.record("op", client=self.name, doc=doc_id, key=key, value=None, via="wire")
            return
        value = self.token_value()
        # Stamped after everything this client has seen of the id, its tombstone included (the
        # SDK's hybrid clock does the same): a write must not sort below what it replaces.
        held = replica.documents.get(doc_id)
        tombstone = replica.tombstones.pop(doc_id, None)
        doc = {
            **value,
            "_id": doc_id,
            "_revision": (held["_revision"] + 1) if held else 1,
            "_modified": max(
                now_ms(),
                (held["_modified"] + 1) if held else 0,
                (tombstone + 1) if tombstone is not None else 0,
            ),
            "_origin": self.origin,
        }
        replica.documents[doc_id] = doc
        replica.journal[doc_id] = doc
        key = [doc["_modified"], 0, doc["_revision"], doc["_origin"]]
        self.history.record("op", client=self.name, doc=doc_id, key=key, value=value, via="wire")

    def _record_acks(self, sent: dict[str, Any], receipt: dict[str, Any]) -> None:
        for doc_id in [*receipt.get("added", []), *receipt.get("removed", [])]:
            version = sent.get(doc_id)
            if version is None:
                continue
            if isinstance(version, int):
                key, value = [version, 1, 0, ""], None
            else:
                key = [version["_modified"], 0, version["_revision"], version["_origin"]]
                value = wire_body(version)
            self.history.record(
                "ack", client=self.name, doc=doc_id, key=key, value=value, via="wire"
            )
            if self.replica.journal.get(doc_id) == version:
                self.replica.journal.pop(doc_id, None)

    async def session(self, *, live_seconds: float, writes: bool) -> None:
        async with self._one_session:
            await self._session(live_seconds=live_seconds, writes=writes)

    async def _session(self, *, live_seconds: float, writes: bool) -> None:
        from replication.protocol.messages import BATCH_ACK, FEED, FEED_ACK

        replica = await self._open()
        self.history.record("session", client=self.name, phase="open")
        try:
            await replica.connect()
            if replica.journal:
                sent = dict(replica.journal)
                message = replica.message(
                    "no2.sync.batch.start",
                    feed=replica.journal_feed(),
                    nextOffset=len(sent),
                    batchSize=len(sent),
                    startMarkers=None,
                    endMarkers=None,
                )
                await replica.send(message)
                ack = await replica.expect(BATCH_ACK)
                self._record_acks(sent, ack["receipt"])
            await replica.pull()
            self.history.record(
                "session", client=self.name, phase="pulled", end=replica.markers["collectionMarker"]
            )
            deadline = time.monotonic() + live_seconds
            in_flight: dict[str, dict[str, Any]] = {}
            while time.monotonic() < deadline and not (writes and self.quiet.is_set()):
                if writes and not self.quiet.is_set() and self.rng.random() < 0.5:
                    self.write()
                if replica.journal and len(in_flight) < 2:
                    sent = dict(replica.journal)
                    message = replica.message(FEED, feed=replica.journal_feed())
                    in_flight[message["header"]["id"]] = sent
                    await replica.send(message)
                try:
                    incoming = await replica.receive(timeout=self.rng.uniform(0.2, 0.8))
                except TimeoutError:
                    continue
                kind = incoming["header"]["messageType"]
                if kind == FEED_ACK:
                    sent = in_flight.pop(incoming["header"]["correlationId"] or "", {})
                    self._record_acks(sent, incoming["receipt"])
                elif kind == FEED:
                    held = replica.markers["collectionMarker"]
                    self.history.record(
                        "feed",
                        client=self.name,
                        held=held,
                        start=incoming["startMarkers"]["collectionMarker"],
                        end=incoming["endMarkers"]["collectionMarker"],
                    )
                    replica.apply_feed(incoming["feed"])
                    if incoming["endMarkers"]["collectionMarker"] > held:
                        replica.markers = dict(incoming["endMarkers"])
                    await replica.send(
                        replica.message(
                            FEED_ACK,
                            incoming["header"]["id"],
                            receipt=replica.receipt_for(incoming["feed"]),
                        )
                    )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(replica.disconnect(), 5)
        finally:
            with contextlib.suppress(Exception):
                await replica.transport.close()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.quiet.is_set():
                await asyncio.sleep(0.3)
                continue
            try:
                await self.session(live_seconds=self.rng.uniform(1, 6), writes=True)
            except Exception:
                self.errors += 1
            # Between sessions it is offline, and writes now and then.
            for _ in range(self.rng.randrange(0, 6)):
                if self.replica is not None and not self.quiet.is_set():
                    self.write()
                await self.pause(0.2, 0.8)

    async def sync(self) -> None:
        await self.session(live_seconds=0.0, writes=False)

    def state(self) -> str:
        if self.replica is None:
            return comparable({}, {})
        documents = {
            k: {"modified": d["_modified"], "revision": d["_revision"], "body": wire_body(d)}
            for k, d in self.replica.documents.items()
        }
        return comparable(documents, dict(self.replica.tombstones))

    def pending(self) -> int:
        return len(self.replica.journal) if self.replica is not None else 0


# --- HTTP ------------------------------------------------------------------------------------


def http_call(
    port: int, method: str, path: str, token: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()


class HttpWriter(Base):
    def __init__(
        self, name: str, history: History, rng: random.Random, *, ports: list[int], token: str
    ) -> None:
        super().__init__(name, history, rng)
        self.ports = ports
        self.token = token

    async def run(self, stop: asyncio.Event) -> None:
        base = f"/api/v1/tenants/{TENANT}/collections/{COLLECTION}/documents/"
        while not stop.is_set():
            await self.pause(0.2, 0.8)
            if self.quiet.is_set():
                continue
            doc_id = pick_doc(self.rng)
            port = self.rng.choice(self.ports)
            try:
                deleting = self.rng.random() < 0.3
                if deleting and self.rng.random() < 0.5:
                    doc_id = recent_fresh(self.rng) or doc_id
                if deleting:
                    started = now_ms()
                    self.history.record(
                        "op", client=self.name, doc=doc_id, key=[started, 1, 0, ""], via="http"
                    )
                    status, _ = await asyncio.to_thread(
                        http_call, port, "DELETE", base + doc_id, self.token
                    )
                    if 200 <= status < 300:
                        # The server stamps the delete at or after the request: a lower bound.
                        self.history.record(
                            "ack",
                            client=self.name,
                            doc=doc_id,
                            key=[started, 1, 0, ""],
                            value=None,
                            via="http",
                            bound=True,
                        )
                    continue
                value = self.token_value()
                # The server stamps the write: the attempt is recorded without a key, before
                # the request, as its answer may be lost after it was stored.
                self.history.record(
                    "op", client=self.name, doc=doc_id, key=None, value=value, via="http"
                )
                status, doc = await asyncio.to_thread(
                    http_call, port, "PUT", base + doc_id, self.token, value
                )
                if 200 <= status < 300 and doc:
                    key = [doc["_modified"], 0, doc["_revision"], doc["_origin"]]
                    self.history.record(
                        "ack", client=self.name, doc=doc_id, key=key, value=value, via="http"
                    )
            except Exception:
                self.errors += 1


# --- topics ----------------------------------------------------------------------------------


class Producer(Base):
    def __init__(
        self, name: str, history: History, rng: random.Random, *, urls: list[str], token: str
    ) -> None:
        super().__init__(name, history, rng)
        self.urls = urls
        self.token = token
        self.pending_ids: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        from datagate_replica.topics import TopicsClient

        client: TopicsClient | None = None
        while not stop.is_set():
            try:
                if client is None:
                    client = TopicsClient(
                        self.rng.choice(self.urls),
                        tenant=TENANT,
                        token=self.token,
                        device=self.name,
                        timeout=10.0,
                    )
                    await client.connect()
                if not self.pending_ids:
                    if self.quiet.is_set():
                        await asyncio.sleep(0.3)
                        continue
                    self.pending_ids = [
                        f"{self.name}-{uuid.uuid4().hex[:10]}"
                        for _ in range(self.rng.randrange(1, 5))
                    ]
                ids = list(self.pending_ids)
                offsets = await client.publish(TOPIC, [{"id": i} for i in ids], message_ids=ids)
                for message_id, offset in zip(ids, offsets, strict=True):
                    self.history.record(
                        "publish", topic=TOPIC, message_id=message_id, offset=offset
                    )
                self.pending_ids = []  # a failed publish is retried with the same ids
                await self.pause(0.1, 0.5)
            except Exception:
                self.errors += 1
                if client is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), 5)
                client = None
                await self.pause(0.2, 1.0)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)


class Consumer(Base):
    def __init__(
        self, name: str, history: History, rng: random.Random, *, urls: list[str], token: str
    ) -> None:
        super().__init__(name, history, rng)
        self.urls = urls
        self.token = token
        self.stalled = False  # the fault: stop committing
        self.commit_sent = 0
        self.committed = 0
        self.batch_size = 5

    async def run(self, stop: asyncio.Event) -> None:
        from datagate_replica.topics import TopicsClient

        while not stop.is_set():
            client = TopicsClient(
                self.rng.choice(self.urls),
                tenant=TENANT,
                token=self.token,
                device=self.name,
                timeout=10.0,
            )
            try:
                await client.connect()
                subscription = client.subscribe(TOPIC, batch_size=self.batch_size)
                await subscription.start()
                self.history.record(
                    "subscribed",
                    consumer=self.name,
                    topic=TOPIC,
                    committed=subscription.committed,
                    next_offset=subscription.next_offset,
                    batch_size=subscription.batch_size,
                    **{"from": "committed"},
                )
                self.committed = max(self.committed, subscription.committed)
                async for message in _with_stop(subscription, stop):
                    self.history.record(
                        "deliver",
                        consumer=self.name,
                        topic=TOPIC,
                        offset=message.offset,
                        message_id=message.message_id,
                        commit_sent=self.commit_sent,
                    )
                    while self.stalled and not stop.is_set():
                        await asyncio.sleep(0.2)
                    if stop.is_set():
                        break
                    self.commit_sent = max(self.commit_sent, message.offset)
                    acked = await client.commit(TOPIC, message.offset)
                    self.committed = max(self.committed, acked)
                    self.history.record("commit", consumer=self.name, topic=TOPIC, offset=acked)
            except Exception:
                self.errors += 1
                await self.pause(0.2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)


async def _with_stop(subscription: Any, stop: asyncio.Event) -> Any:
    """The subscription's messages until `stop` is set (checked at least every second)."""
    while not stop.is_set():
        try:
            message = await asyncio.wait_for(subscription.__anext__(), 1.0)
        except TimeoutError:
            continue
        except StopAsyncIteration:
            return
        yield message


Factory = Callable[[], Base]
