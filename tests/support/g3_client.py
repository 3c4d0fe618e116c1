"""A strict Nitrite G3 replica for tests, written from ../shared/NITRITE-G3.md (no Java here).

It behaves as Nitrite's `nitrite-replication` client does (G3, its final form) and reads the
server's frames the way that client's Jackson `ObjectMapper` does:

- every server frame is parsed into pydantic models with `extra="forbid"` wherever Jackson
  refuses unknown keys (header, feed, receipt, markers, and the top level of error,
  disconnect and feed messages) and `extra="ignore"` only where G3 has
  `@JsonIgnoreProperties(ignoreUnknown=true)` (the batch-family messages, through
  `BatchMessage`). A frame that fails is fatal, as "Failed to transform message from server";
- beyond Jackson, `exact=True` (the default) also demands that every frame has exactly the
  body keys of NITRITE-G3.md section 1.3, so a test notices an extra key even where G3 would
  ignore it;
- documents must have `_id` a string of a signed int64, `_revision` an int of 32 bits and
  `_modified` an int of at least 2^31 (section 1.1);
- it polls: every `polling_rate` seconds (1 s) a tick opens a fresh socket if the replica is
  stopped, and a replica is stopped until a ConnectAck arrives, so a slow ConnectAck means a
  second socket (section 2.1). It announces no capabilities, so never `live`;
- push: stop-and-wait chunks of `chunk_size` from a marker delta, a persistent ledger of ids
  awaiting a receipt, retry chunks with `nextOffset: null`, then batch.end (section 2.2);
- merge: higher `_revision` wins, then a strictly greater `_modified`; incoming tombstones
  remove unconditionally (section 3).

Everything the real client would choke on is collected in `problems` (a test asserts it
stays empty): a background session cannot fail a test any other way.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

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
REPLICATOR = "Replicator.NO₂"

BATCH_KEYS = {"nextOffset", "batchSize", "startMarkers", "endMarkers"}
# NITRITE-G3.md section 1.3: body keys besides `header`, per server message type.
G3_KEYS: dict[str, set[str]] = {
    ERROR: {"error"},
    CONNECT_ACK: BATCH_KEYS | {"tombstoneTtl"},
    DISCONNECT: set(),
    BATCH_START: BATCH_KEYS | {"feed"},
    BATCH_CONTINUE: BATCH_KEYS | {"feed"},
    BATCH_END: BATCH_KEYS,
    BATCH_ACK: BATCH_KEYS | {"receipt"},
    BATCH_END_ACK: BATCH_KEYS,
    FEED: {"feed"},
    FEED_ACK: {"receipt"},
}


# --- what Jackson reads ------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Header(Strict):
    id: StrictStr | None = None
    transactionId: StrictStr | None = None
    correlationId: StrictStr | None = None
    tenant: StrictStr | None = None
    collection: StrictStr | None = None
    userName: StrictStr | None = None
    timestamp: StrictInt | None = None
    messageType: StrictStr | None = None
    origin: StrictStr | None = None


class Markers(Strict):
    collectionMarker: StrictInt | None = None
    tombstoneMarker: StrictInt | None = None


class DeltaStates(Strict):
    changeSet: list[dict[str, Any]] | None = None
    tombstoneMap: dict[str, StrictInt] | None = None


class Receipt(Strict):
    added: list[StrictStr] | None = None
    removed: list[StrictStr] | None = None


class BatchMessage(BaseModel):
    """`@JsonIgnoreProperties(ignoreUnknown=true)`: the only lenient class."""

    model_config = ConfigDict(extra="ignore")

    header: Header
    nextOffset: StrictInt | None = None
    batchSize: StrictInt | None = None
    startMarkers: Markers | None = None
    endMarkers: Markers | None = None


class ConnectAck(BatchMessage):
    tombstoneTtl: StrictInt | None = None


class BatchChange(BatchMessage):
    feed: DeltaStates | None = None


class BatchAck(BatchMessage):
    receipt: Receipt | None = None


class ErrorMessage(Strict):
    header: Header
    error: StrictStr | None = None


class Disconnect(Strict):
    header: Header


class DataGateFeed(Strict):
    header: Header
    feed: DeltaStates | None = None


class DataGateFeedAck(Strict):
    header: Header
    receipt: Receipt | None = None


MODELS: dict[str, type[BaseModel]] = {
    ERROR: ErrorMessage,
    CONNECT_ACK: ConnectAck,
    DISCONNECT: Disconnect,
    BATCH_START: BatchChange,
    BATCH_CONTINUE: BatchChange,
    BATCH_END: BatchMessage,
    BATCH_ACK: BatchAck,
    BATCH_END_ACK: BatchMessage,
    FEED: DataGateFeed,
    FEED_ACK: DataGateFeedAck,
}


class Fatal(Exception):
    """What the G3 client treats as fatal: it closes the socket."""


def close_reason(text: str) -> str:
    """G3's close reason: the text cut at its last ':' until it fits 123 characters; a longer
    text without ':' throws StringIndexOutOfBounds in the client (NITRITE-G3.md 2.1)."""
    while len(text) > 123:
        cut = text.rfind(":")
        if cut < 0:
            raise Fatal(f"StringIndexOutOfBounds: error text over 123 chars: {text!r}")
        text = text[:cut]
    return text


def check_document(doc: dict[str, Any]) -> None:
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str):
        raise Fatal(f"InvalidIdException: _id {doc_id!r} is not a string")
    try:
        number = int(doc_id)
    except ValueError:
        raise Fatal(f"InvalidIdException: _id {doc_id!r} is not a NitriteId") from None
    if not -(2**63) <= number < 2**63:
        raise Fatal(f"InvalidIdException: _id {doc_id!r} out of range")
    revision = doc.get("_revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or not revision < 2**31:
        raise Fatal(f"_revision {revision!r} is not a 32-bit int")
    modified = doc.get("_modified")
    if not isinstance(modified, int) or isinstance(modified, bool) or modified < 2**31:
        raise Fatal(f"ClassCastException: _modified {modified!r} does not decode as Long")


def parse(frame: str, *, exact: bool) -> tuple[str, BaseModel, dict[str, Any]]:
    """A server frame as G3 reads it: (messageType, model, raw)."""
    try:
        raw = json.loads(frame)
    except ValueError as exc:
        raise Fatal(f"Failed to transform message from server: {exc}") from None
    header = raw.get("header") if isinstance(raw, dict) else None
    if not isinstance(header, dict):
        raise Fatal("no header: NullPointerException in the dispatcher")
    message_type = header.get("messageType")
    model = MODELS.get(message_type) if isinstance(message_type, str) else None
    if model is None or not isinstance(message_type, str):
        raise Fatal(f"A null message is received for {message_type!r}")
    if not header.get("collection"):
        raise Fatal("header.collection is empty (MessageTemplate.validateMessage)")
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        raise Fatal(f"Failed to transform message from server: {exc}") from None
    if exact:
        keys = set(raw) - {"header"}
        if keys != G3_KEYS[message_type]:
            raise Fatal(f"{message_type} keys {sorted(keys)} != {sorted(G3_KEYS[message_type])}")
    return message_type, parsed, raw


# --- the replica ---------------------------------------------------------------------------------


@dataclass
class Tombstone:
    deleted_time: int
    counter: int
    source: str


@dataclass
class SessionLog:
    """What one socket saw: for assertions."""

    number: int
    started: float
    frames: list[dict[str, Any]] = field(default_factory=list)
    pushed_docs: int = 0
    pushed_tombstones: int = 0
    pushed_ids: set[str] = field(default_factory=set)
    acked: bool = False  # ConnectAck arrived
    completed: bool = False  # the server's Disconnect after the pull
    error: str | None = None
    close_reason: str | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class G3Replica:
    """One in-memory G3 replica of `tenant/collection` for `user` (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tenant: str,
        collection: str,
        user: str,
        token: str,
        name: str | None = None,
        chunk_size: int = 10,
        polling_rate: float = 1.0,
        timeout: float = 5.0,
        exact: bool = True,
        trailing_slash: bool = False,
    ) -> None:
        self.url = f"ws://{host}:{port}/ws/datagate/{tenant}/{collection}/{user}"
        if trailing_slash:
            self.url += "/"
        self.tenant, self.collection, self.user, self.token = tenant, collection, user, token
        self.replica_id = f"{name}[{uuid.uuid4()}]" if name else str(uuid.uuid4())
        self.chunk_size, self.polling_rate, self.timeout, self.exact = (
            chunk_size,
            polling_rate,
            timeout,
            exact,
        )
        self.docs: dict[str, dict[str, Any]] = {}
        self.tombstones: dict[str, Tombstone] = {}
        # collection attributes (section 3.4)
        self.local_markers = (0, 0)
        self.remote_markers = (0, 0)
        self.ledger_added: set[str] = set()
        self.ledger_removed: set[str] = set()
        self.stopped = True
        self.sessions: list[SessionLog] = []
        self.problems: list[str] = []
        self.errors: list[str] = []
        # id -> (session number, monotonic time) of the first arrival of each pulled version
        self.arrivals: dict[tuple[str, int, int], tuple[int, float]] = {}
        self._ids = itertools.count(1)
        self._poller: asyncio.Task[None] | None = None
        self._session_tasks: set[asyncio.Task[None]] = set()

    # --- local writes (core WriteOperations) -----------------------------------------------

    def new_id(self) -> str:
        return str(random.getrandbits(62))

    def put(self, doc_id: str | None = None, **fields: Any) -> str:
        doc_id = doc_id or self.new_id()
        old = self.docs.get(doc_id)
        doc = dict(fields)
        doc["_id"] = doc_id
        doc["_revision"] = old["_revision"] + 1 if old else 1
        doc["_modified"] = now_ms()
        self.docs[doc_id] = doc
        return doc_id

    def remove(self, doc_id: str) -> None:
        old = self.docs.pop(doc_id)
        removed_at = now_ms()
        old["_revision"] += 1
        old["_modified"] = removed_at
        # The collection listener: deleted_time = the removed doc's _modified.
        self.tombstones[doc_id] = Tombstone(removed_at, now_ms() + next(self._ids), self.collection)

    def fields(self, doc_id: str) -> dict[str, Any] | None:
        doc = self.docs.get(doc_id)
        if doc is None:
            return None
        return {k: v for k, v in doc.items() if k not in ("_id", "_revision", "_modified")}

    # --- merge (crdt/LastWriteWinMap) -------------------------------------------------------

    def arrived(self, doc_id: str) -> tuple[int, float] | None:
        """(session number, monotonic time) of the latest version of `doc_id` that arrived."""
        doc = self.docs.get(doc_id)
        if doc is None:
            key = (
                (doc_id, -1, self.tombstones[doc_id].deleted_time)
                if doc_id in self.tombstones
                else None
            )
        else:
            key = (doc_id, doc["_revision"], doc["_modified"])
        return self.arrivals.get(key) if key is not None else None

    def merge(self, feed: DeltaStates | None, session: int = 0) -> tuple[list[str], list[str]]:
        added: list[str] = []
        removed: list[str] = []
        if feed is None:
            return added, removed
        for doc in feed.changeSet or []:
            check_document(doc)
            doc = {k: v for k, v in doc.items() if k != "_source"}
            doc_id = doc["_id"]
            added.append(doc_id)
            self.arrivals.setdefault(
                (doc_id, doc["_revision"], doc["_modified"]), (session, time.monotonic())
            )
            local = self.docs.get(doc_id)
            tomb = self.tombstones.get(doc_id)
            if local is None:
                if tomb is None:
                    self.docs[doc_id] = doc
                elif doc["_modified"] >= tomb.counter:
                    self.docs[doc_id] = doc
                    del self.tombstones[doc_id]
                continue
            if doc["_revision"] > local["_revision"] or (
                doc["_revision"] == local["_revision"] and doc["_modified"] > local["_modified"]
            ):
                self.docs[doc_id] = doc
        for doc_id, deleted_time in (feed.tombstoneMap or {}).items():
            removed.append(doc_id)
            self.arrivals.setdefault((doc_id, -1, deleted_time), (session, time.monotonic()))
            if doc_id in self.docs:
                del self.docs[doc_id]
                self.tombstones[doc_id] = Tombstone(deleted_time, 0, REPLICATOR)
        return added, removed

    # --- markers and deltas ------------------------------------------------------------------

    def current_markers(self) -> tuple[int, int]:
        docs = max((d["_modified"] for d in self.docs.values()), default=0)
        tombs = max(
            (t.counter for t in self.tombstones.values() if t.source == self.collection),
            default=0,
        )
        return docs, tombs

    def delta(
        self, start: tuple[int, int], end: tuple[int, int], offset: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        docs = sorted(
            (d for d in self.docs.values() if start[0] < d["_modified"] <= end[0]),
            key=lambda d: (d["_modified"], d["_id"]),
        )[offset : offset + self.chunk_size]
        tombs = sorted(
            (
                (doc_id, t)
                for doc_id, t in self.tombstones.items()
                if t.source == self.collection and start[1] < t.counter <= end[1]
            ),
            key=lambda item: (item[1].counter, item[0]),
        )[offset : offset + self.chunk_size]
        return [dict(d) for d in docs], {doc_id: t.deleted_time for doc_id, t in tombs}

    def collect_garbage(self, ttl_days: int | None) -> None:
        if ttl_days is None or ttl_days <= 0:
            return
        cutoff = now_ms() - ttl_days * 24 * 3600 * 1000
        for doc_id in [i for i, t in self.tombstones.items() if t.counter < cutoff]:
            del self.tombstones[doc_id]
            self.ledger_removed.discard(doc_id)

    # --- polling (Replica.connect) -----------------------------------------------------------

    def start(self) -> None:
        """Replica.connect(): a tick every `polling_rate` seconds opens a session if stopped."""
        self._poller = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        """disconnectNow(): no more ticks; sockets still open are closed (Replica.close)."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for task in list(self._session_tasks):
            task.cancel()
        await asyncio.gather(*self._session_tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            if self.stopped:
                self.open_session()
            await asyncio.sleep(self.polling_rate)

    def open_session(self) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self.session())
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)
        return task

    async def sync_once(self, *, timeout: float = 30.0) -> SessionLog:
        """One whole session, for tests that step (the poller does the same on its own)."""
        await asyncio.wait_for(self.session(), timeout)
        return self.sessions[-1]

    async def wait_for(
        self,
        condition: Callable[[], Any],
        *,
        timeout: float = 30.0,
        what: str = "",
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert not self.problems, self.problems
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)
        assert not self.problems, self.problems

    # --- one socket (DataGateSocketListener + BatchChangeSender) -----------------------------

    async def session(self) -> None:
        log = SessionLog(number=len(self.sessions) + 1, started=time.monotonic())
        self.sessions.append(log)
        try:
            async with websockets.connect(
                self.url, open_timeout=self.timeout, max_size=None, ping_interval=10
            ) as socket:
                await _Conversation(self, socket, log).run()
        except Fatal as fatal:
            self.problems.append(f"session {log.number}: {fatal}")
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            log.error = log.error or f"{type(exc).__name__}: {exc}"
        finally:
            self.stopped = True


class _Conversation:
    def __init__(self, replica: G3Replica, socket: Any, log: SessionLog) -> None:
        self.replica = replica
        self.socket = socket
        self.log = log
        self.state = "ReadyToSend"
        self.start_markers = (0, 0)
        self.end_markers = (0, 0)

    def header(
        self, message_type: str, *, transaction_id: str | None, correlation_id: str | None = None
    ) -> dict[str, Any]:
        r = self.replica
        return {
            "id": str(uuid.uuid4()),
            "transactionId": transaction_id,
            "correlationId": correlation_id,
            "tenant": r.tenant,
            "collection": r.collection,
            "userName": r.user,
            "timestamp": now_ms(),
            "messageType": message_type,
            "origin": r.replica_id,
        }

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))

    async def run(self) -> None:
        r = self.replica
        await self.send(
            {
                "header": self.header(CONNECT, transaction_id=str(uuid.uuid4())),
                "authToken": r.token,
            }
        )
        while True:
            try:
                frame = await asyncio.wait_for(self.socket.recv(), r.timeout)
            except websockets.ConnectionClosed:
                return
            text = frame if isinstance(frame, str) else frame.decode()
            message_type, message, raw = parse(text, exact=r.exact)
            self.log.frames.append(raw)
            if await self.handle(message_type, message):
                return

    async def handle(self, message_type: str, message: Any) -> bool:
        """One server message; True when the socket is closed."""
        r = self.replica
        tx = message.header.transactionId
        if message_type == CONNECT_ACK:
            self.log.acked = True
            r.collect_garbage(message.tombstoneTtl)
            r.stopped = False
            self.start_markers = r.local_markers
            self.end_markers = r.current_markers()
            docs, tombs = r.delta(self.start_markers, self.end_markers, 0)
            await self.send_chunk(BATCH_START, docs, tombs, r.chunk_size, tx)
            self.state = "StartSent"
        elif message_type == BATCH_ACK:
            if self.state == "ChangesSent":
                return False
            receipt = message.receipt or Receipt()
            r.ledger_added -= set(receipt.added or [])
            r.ledger_removed -= set(receipt.removed or [])
            if message.nextOffset is None:
                # `int` unboxing: an NPE, not fatal, and the push stalls for good.
                raise Fatal("NullPointerException: BatchAck.nextOffset is null; push stalls")
            docs, tombs = r.delta(self.start_markers, self.end_markers, message.nextOffset)
            if docs or tombs:
                await self.send_chunk(
                    BATCH_CONTINUE, docs, tombs, message.nextOffset + r.chunk_size, tx
                )
            elif r.ledger_added or r.ledger_removed:
                docs = [dict(r.docs[i]) for i in sorted(r.ledger_added) if i in r.docs]
                tombs = {
                    i: r.tombstones[i].deleted_time
                    for i in sorted(r.ledger_removed)
                    if i in r.tombstones
                }
                await self.send_chunk(BATCH_CONTINUE, docs, tombs, None, tx)
            else:
                await self.send(
                    {
                        "nextOffset": None,
                        "batchSize": r.chunk_size,
                        "startMarkers": _markers(r.remote_markers),
                        "endMarkers": _markers(self.end_markers),
                        "header": self.header(BATCH_END, transaction_id=tx),
                    }
                )
                self.state = "ChangesSent"
        elif message_type == BATCH_END_ACK:
            r.local_markers = _stored(message.endMarkers, "BatchEndAck.endMarkers")
        elif message_type in (BATCH_START, BATCH_CONTINUE):
            added, removed = r.merge(message.feed, self.log.number)
            await self.send(
                {
                    "nextOffset": message.nextOffset,
                    "batchSize": message.batchSize,
                    "startMarkers": _dump(message.startMarkers),
                    "endMarkers": _dump(message.endMarkers),
                    "header": self.header(
                        BATCH_ACK, transaction_id=tx, correlation_id=message.header.id
                    ),
                    "receipt": {"added": added, "removed": removed},
                }
            )
        elif message_type == BATCH_END:
            await self.send(
                {
                    "nextOffset": None,
                    "batchSize": None,
                    "startMarkers": None,
                    "endMarkers": None,
                    "header": self.header(
                        BATCH_END_ACK, transaction_id=tx, correlation_id=message.header.id
                    ),
                }
            )
            r.remote_markers = _stored(message.endMarkers, "BatchChangeEnd.endMarkers")
        elif message_type == DISCONNECT:
            self.log.completed = True
            await self.socket.close(1000, "Server Disconnected")
            return True
        elif message_type == ERROR:
            text = message.error or ""
            self.log.error = text
            r.errors.append(text)
            self.log.close_reason = close_reason(text)
            await self.socket.close(1000, self.log.close_reason)
            return True
        elif message_type == FEED:
            r.merge(
                message.feed, self.log.number
            )  # then a ClassCastException: no DataGateFeedAck (2.5)
        return False

    async def send_chunk(
        self,
        message_type: str,
        docs: list[dict[str, Any]],
        tombs: dict[str, int],
        next_offset: int | None,
        tx: str | None,
    ) -> None:
        r = self.replica
        r.ledger_added |= {d["_id"] for d in docs}
        r.ledger_removed |= set(tombs)
        self.log.pushed_ids |= {d["_id"] for d in docs} | set(tombs)
        self.log.pushed_docs += len(docs)
        self.log.pushed_tombstones += len(tombs)
        await self.send(
            {
                "nextOffset": next_offset,
                "batchSize": r.chunk_size,
                "startMarkers": None,
                "endMarkers": None,
                "header": self.header(message_type, transaction_id=tx),
                "feed": {"changeSet": docs, "tombstoneMap": tombs},
            }
        )


def _markers(pair: tuple[int, int]) -> dict[str, int]:
    return {"collectionMarker": pair[0], "tombstoneMarker": pair[1]}


def _dump(markers: Markers | None) -> dict[str, Any] | None:
    return markers.model_dump() if markers is not None else None


def _stored(markers: Markers | None, what: str) -> tuple[int, int]:
    """Markers as G3 stores them (Objects.toString, then Long.parseLong next session)."""
    if markers is None or markers.collectionMarker is None or markers.tombstoneMarker is None:
        raise Fatal(f"{what} has a null marker: the next session dies in Long.parseLong")
    return markers.collectionMarker, markers.tombstoneMarker
