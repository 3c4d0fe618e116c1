"""The sync engine in scripted conversations with a websocket peer speaking PROTOCOL.md.

No DataGate server here: each test plays the server's side of one conversation, message by
message, and checks what the replica sends and stores. The end-to-end tests against a real
daphne live in tests/replication/test_replica_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from datagate_replica.replica import AsyncReplica
from datagate_replica.store import Markers
from datagate_replica.sync import AuthenticationError, GapError, SyncError, backoff_delay
from websockets.asyncio.server import ServerConnection, serve

Script = Callable[["Peer"], Awaitable[None]]
FRESH = Markers(0, 1)


class Peer:
    """The server side of one conversation."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def receive(self, expected: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            message = json.loads(await self.ws.recv())
        assert message["header"]["messageType"] == expected, message
        return message

    async def send(
        self, message_type: str, correlation: dict[str, Any] | None = None, **body: Any
    ) -> str:
        message_id = str(uuid.uuid4())
        header = {
            "id": message_id,
            "messageType": message_type,
            "correlationId": correlation["header"]["id"] if correlation else None,
            "tenant": "acme",
            "collection": "notes",
            "userName": "alice",
            "origin": "server",
            "timestamp": 0,
        }
        await self.ws.send(json.dumps({"header": header, **body}))
        return message_id

    async def connect(self, *, position: Markers = FRESH) -> dict[str, Any]:
        connect = await self.receive("no2.sync.connect")
        await self.send(
            "no2.sync.connect.ack",
            connect,
            tombstoneTtl=30,
            batchSize=500,
            endMarkers=position.to_wire(),
            capabilities=["live"],
            readOnly=False,
        )
        return connect

    async def accept_push(self, *, acknowledge: bool = True) -> list[dict[str, Any]]:
        """Acknowledge every pushed chunk (fully, or with an empty receipt); stop at batch.end."""
        chunks = []
        while True:
            async with asyncio.timeout(10):
                message = json.loads(await self.ws.recv())
            kind = message["header"]["messageType"]
            if kind == "no2.sync.batch.end":
                await self.send(
                    "no2.sync.batch.end.ack",
                    message,
                    startMarkers=message["startMarkers"],
                    endMarkers=message["endMarkers"],
                )
                chunks.append(message)
                return chunks
            chunks.append(message)
            feed = message["feed"] if acknowledge else {"changeSet": [], "tombstoneMap": {}}
            await self.send(
                "no2.sync.batch.ack",
                message,
                receipt={
                    "added": [d["_id"] for d in feed["changeSet"]],
                    "removed": list(feed["tombstoneMap"]),
                    "rejected": [],
                },
            )

    async def pull(self, feeds: list[dict[str, Any]], end: Markers, *, reset: bool = False) -> None:
        for index, feed in enumerate(feeds):
            await self.send(
                "no2.sync.batch.start" if index == 0 else "no2.sync.batch.continue",
                feed=feed,
                nextOffset=index + 1,
                batchSize=len(feed["changeSet"]),
                startMarkers=Markers().to_wire(),
                endMarkers=end.to_wire(),
                reset=reset and index == 0,
            )
            ack = await self.receive("no2.sync.batch.ack")
            assert ack["receipt"]["rejected"] == []
        await self.send(
            "no2.sync.batch.end", startMarkers=None, endMarkers=end.to_wire(), batchSize=500
        )
        await self.receive("no2.sync.batch.end.ack")


async def run_peer(
    scripts: list[Script],
) -> tuple[str, asyncio.AbstractServer, list[BaseException]]:
    """Serve one script per incoming connection, in order."""
    queue = list(scripts)
    failures: list[BaseException] = []

    async def handler(ws: ServerConnection) -> None:
        script = queue.pop(0)
        try:
            await script(Peer(ws))
        except BaseException as exc:  # reported by the test, not lost in the server task
            failures.append(exc)
            raise

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"ws://127.0.0.1:{port}", server, failures  # type: ignore[return-value]


def doc(doc_id: str, modified: int, revision: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "_id": doc_id,
        "_revision": revision,
        "_modified": modified,
        "_origin": "other",
        **fields,
    }


def make_replica(url: str, path: Path, **options: Any) -> AsyncReplica:
    options.setdefault("reply_timeout", 10)
    return AsyncReplica(url, "acme", "notes", "secret-token", path=path, **options)


async def test_a_session_pushes_the_journal_in_chunks_then_pulls_and_stores_the_markers(
    tmp_path: Path,
) -> None:
    seen: dict[str, Any] = {}

    async def script(peer: Peer) -> None:
        connect = await peer.connect(position=Markers(7, 3))
        seen["connect"] = connect
        chunks = []
        for expected in (
            "no2.sync.batch.start",
            "no2.sync.batch.continue",
            "no2.sync.batch.continue",
        ):
            chunk = await peer.receive(expected)
            chunks.append(chunk)
            ids = [d["_id"] for d in chunk["feed"]["changeSet"]] + list(
                chunk["feed"]["tombstoneMap"]
            )
            rejected = [
                {"id": "d", "code": "DG-3003", "error": "DG-3003 a key rule denies writing 'd'"}
            ]
            await peer.send(
                "no2.sync.batch.ack",
                chunk,
                receipt={
                    "added": [i for i in ids if i not in ("d", "gone")],
                    "removed": [i for i in ids if i == "gone"],
                    "rejected": rejected if "d" in ids else [],
                },
            )
        seen["chunks"] = chunks
        end = await peer.receive("no2.sync.batch.end")
        seen["end"] = end
        await peer.send(
            "no2.sync.batch.end.ack",
            end,
            startMarkers=end["startMarkers"],
            endMarkers=end["endMarkers"],
        )
        await peer.pull(
            [{"changeSet": [doc("remote", 5, title="from server")], "tombstoneMap": {}}],
            Markers(9, 3),
        )
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([script])
    async with server, make_replica(url, tmp_path / "r.sqlite3", push_chunk_size=2) as replica:
        for name in "abcd":
            replica.put(name, {"n": name})
        replica.put("gone", {})
        replica.delete("gone")
        report = await replica.sync()
        journal_size, rejected, markers = (
            replica.store.journal_size(),
            replica.rejected(),
            replica.markers,
        )
        remote = replica.get("remote")
    assert failures == []
    header = seen["connect"]["header"]
    assert seen["connect"]["authToken"] == "secret-token"
    assert seen["connect"]["capabilities"] == ["ranges"]
    assert header["origin"] == replica.replica_id
    assert header["transactionId"]
    assert [
        len(c["feed"]["changeSet"]) + len(c["feed"]["tombstoneMap"]) for c in seen["chunks"]
    ] == [2, 2, 1]
    assert [c["nextOffset"] for c in seen["chunks"]] == [2, 4, 5]
    assert all(c["header"]["userName"] == "alice" for c in seen["chunks"])
    assert seen["end"]["startMarkers"] == {"collectionMarker": 0, "tombstoneMarker": 0}
    assert report.pushed == 4
    assert [r.version.doc_id for r in report.rejected] == ["d"]
    assert journal_size == 0
    assert [(r.version.doc_id, r.code) for r in rejected] == [("d", "DG-3003")]
    assert markers == Markers(9, 3)
    assert remote is not None
    assert remote["title"] == "from server"


async def test_the_next_session_sends_the_stored_markers_and_resends_what_was_not_acknowledged(
    tmp_path: Path,
) -> None:
    seen: list[dict[str, Any]] = []

    async def cut_off(peer: Peer) -> None:
        await peer.connect()
        await peer.receive("no2.sync.batch.start")
        await peer.ws.close()  # the server dies before acknowledging

    async def second(peer: Peer) -> None:
        await peer.connect(position=Markers(4, 1))
        seen.extend(await peer.accept_push())
        await peer.pull([], Markers(5, 1))
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([cut_off, second])
    path = tmp_path / "r.sqlite3"
    async with server:
        async with make_replica(url, path) as replica:
            replica.store.markers_store(Markers(4, 1))
            replica.put("a", {"n": 1})
            with pytest.raises(SyncError):
                await replica.sync()
            assert replica.store.journal_size() == 1
        async with make_replica(url, path) as replica:  # a restart of the replica
            await replica.sync()
            assert replica.store.journal_size() == 0
            assert replica.markers == Markers(5, 1)
    assert failures == []
    assert [d["_id"] for d in seen[0]["feed"]["changeSet"]] == ["a"]
    assert seen[-1]["startMarkers"] == {"collectionMarker": 4, "tombstoneMarker": 1}


async def test_a_reset_pull_drops_what_the_snapshot_lacks_but_keeps_pending_changes(
    tmp_path: Path,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.connect(position=Markers(50, 1))
        await peer.accept_push(acknowledge=False)  # "pending" stays in the journal
        await peer.pull(
            [
                {"changeSet": [doc("kept", 10)], "tombstoneMap": {}},
                {"changeSet": [], "tombstoneMap": {"dead": 11}},
            ],
            Markers(50, 1),
            reset=True,
        )
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([script])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        replica.store.apply_remote(
            [v for v in _versions([doc("kept", 10), doc("purged", 3)])], markers=Markers(2, 1)
        )
        replica.put("pending", {"n": 1})
        removed: list[str] = []
        replica.on_change(lambda c: removed.append(c.doc_id) if c.deleted else None)
        report = await replica.sync()
        assert failures == []
        assert report.reset
        assert not report.restored
        state = replica.state()
        assert set(state["documents"]) == {"kept", "pending"}
        assert state["tombstones"] == {"dead": 11}
        assert "purged" in removed


async def test_after_a_restore_reset_the_replica_pushes_again_what_the_server_lost(
    tmp_path: Path,
) -> None:
    pushed: list[dict[str, Any]] = []

    async def restored(peer: Peer) -> None:
        await peer.connect(position=Markers(3, 99))  # a new epoch: restored from a backup
        await peer.accept_push()
        await peer.pull(
            [{"changeSet": [doc("old", 5, revision=1, v="backup")], "tombstoneMap": {}}],
            Markers(3, 99),
            reset=True,
        )
        await peer.send("no2.sync.disconnect")

    async def again(peer: Peer) -> None:
        await peer.connect(position=Markers(3, 99))
        pushed.extend(await peer.accept_push())
        await peer.pull([], Markers(5, 99))
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([restored, again])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        replica.store.apply_remote(
            _versions([doc("old", 8, revision=2, v="newer"), doc("lost", 6)]),
            markers=Markers(40, 7),
        )
        report = await replica.sync()
    assert failures == []
    assert report.restored
    assert report.requeued == 2
    sent = {d["_id"]: d for chunk in pushed[:-1] for d in chunk["feed"]["changeSet"]}
    assert set(sent) == {"old", "lost"}
    assert sent["old"]["v"] == "newer"
    assert sent["old"]["_modified"] == 8
    assert pushed[-1]["startMarkers"] == {"collectionMarker": 3, "tombstoneMarker": 99}


async def test_a_reset_is_repaired_by_ranges_and_the_pull_starts_at_the_checked_position(
    tmp_path: Path,
) -> None:
    from datagate_replica.ranges import LocalIndex

    seen: dict[str, Any] = {}

    async def script(peer: Peer) -> None:
        connect = await peer.receive("no2.sync.connect")
        assert connect["capabilities"] == ["ranges"]
        await peer.send(
            "no2.sync.connect.ack",
            connect,
            tombstoneTtl=30,
            batchSize=500,
            endMarkers=Markers(60, 1).to_wire(),
            capabilities=["ranges"],
            purgeMarker=20,  # the replica's seq 2 is behind it: a reset, unless repaired
            readOnly=False,
        )
        check = await peer.receive("no2.sync.range.check")
        server = LocalIndex([("kept", 1, 10, False), ("new", 1, 30, False)])
        assert check["ranges"] != [server.range_to_wire(0, 4096)]
        await peer.send(
            "no2.sync.range.result",
            check,
            markers=Markers(55, 1).to_wire(),
            equal=False,
            ranges=[
                {
                    "lo": 0,
                    "hi": 4096,
                    "status": "headers",
                    "headers": [["kept", 1, 10, 0], ["new", 1, 30, 0]],
                }
            ],
        )
        fetch = await peer.receive("no2.sync.range.fetch")
        assert fetch["ids"] == ["new"]
        await peer.send(
            "no2.sync.range.docs",
            fetch,
            feed={"changeSet": [doc("new", 30)], "tombstoneMap": {}},
            missing=[],
        )
        seen["push"] = await peer.accept_push()
        await peer.pull([], Markers(60, 1))
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([script])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        replica.store.apply_remote(
            _versions([doc("kept", 10), doc("gone", 3)]), markers=Markers(2, 1)
        )
        report = await replica.sync()
        markers, documents = replica.markers, set(replica.state()["documents"])
    assert failures == []
    assert not report.reset
    assert report.repaired == 2
    assert report.fetched == 1
    assert {(d.doc_id, d.kind) for d in report.differences} == {
        ("new", "missing"),
        ("gone", "extra"),
    }
    assert seen["push"][-1]["startMarkers"] == {"collectionMarker": 55, "tombstoneMarker": 1}
    assert (markers, documents) == (Markers(60, 1), {"kept", "new"})


async def test_when_the_server_cannot_sum_the_users_view_the_replica_takes_the_reset(
    tmp_path: Path,
) -> None:
    async def script(peer: Peer) -> None:
        connect = await peer.receive("no2.sync.connect")
        await peer.send(
            "no2.sync.connect.ack",
            connect,
            tombstoneTtl=30,
            batchSize=500,
            endMarkers=Markers(60, 1).to_wire(),
            capabilities=["ranges"],
            purgeMarker=20,
            readOnly=False,
        )
        check = await peer.receive("no2.sync.range.check")
        text = "DG-2030 range check unavailable: the collection has more than 5 rows to filter"
        await peer.send("no2.sync.error", check, error=text, code="DG-2030", fatal=False)
        pushed = await peer.accept_push()
        assert pushed[-1]["startMarkers"] == {"collectionMarker": 2, "tombstoneMarker": 1}
        await peer.pull(
            [{"changeSet": [doc("kept", 10)], "tombstoneMap": {}}], Markers(60, 1), reset=True
        )
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([script])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        replica.store.apply_remote(
            _versions([doc("kept", 10), doc("gone", 3)]), markers=Markers(2, 1)
        )
        report = await replica.sync()
        assert set(replica.state()["documents"]) == {"kept"}
    assert failures == []
    assert report.reset
    assert report.repaired == 0


async def test_live_feeds_are_applied_acked_and_local_changes_sent_as_feeds(tmp_path: Path) -> None:
    got: dict[str, Any] = {}
    done = asyncio.Event()

    async def script(peer: Peer) -> None:
        connect = await peer.connect(position=Markers(1, 1))
        got["capabilities"] = connect["capabilities"]
        await peer.accept_push()
        await peer.pull([], Markers(1, 1))
        await peer.send(
            "no2.sync.feed",
            feed={"changeSet": [doc("x", 10, v=1)], "tombstoneMap": {}},
            startMarkers=Markers(1, 1).to_wire(),
            endMarkers=Markers(2, 1).to_wire(),
        )
        got["ack"] = await peer.receive("no2.sync.feed.ack")
        feed = await peer.receive("no2.sync.feed")
        got["feed"] = feed
        await peer.send(
            "no2.sync.feed.ack", feed, receipt={"added": ["mine"], "removed": [], "rejected": []}
        )
        await done.wait()
        await peer.send("no2.sync.disconnect")

    url, server, failures = await run_peer([script])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        remote: list[str] = []
        replica.on_change(lambda c: remote.append(c.doc_id) if c.source == "remote" else None)
        await replica.start()
        await replica.wait_live(10)
        async with asyncio.timeout(10):
            while not remote:
                await asyncio.sleep(0.02)
        replica.put("mine", {"v": 2})
        async with asyncio.timeout(10):
            while replica.store.journal_size():
                await asyncio.sleep(0.02)
        done.set()
        assert replica.markers == Markers(2, 1)
        await replica.stop()
    assert failures == []
    assert got["capabilities"] == ["live", "ranges"]
    assert got["ack"]["receipt"] == {"added": ["x"], "removed": [], "rejected": []}
    assert [d["_id"] for d in got["feed"]["feed"]["changeSet"]] == ["mine"]
    assert remote == ["x"]


async def test_a_gap_in_the_live_feed_ends_the_session_without_moving_the_markers(
    tmp_path: Path,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.connect(position=Markers(1, 1))
        await peer.accept_push()
        await peer.pull([], Markers(1, 1))
        await peer.send(
            "no2.sync.feed",
            feed={"changeSet": [doc("x", 10)], "tombstoneMap": {}},
            startMarkers=Markers(5, 1).to_wire(),
            endMarkers=Markers(6, 1).to_wire(),
        )
        await peer.ws.wait_closed()

    url, server, failures = await run_peer([script])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        with pytest.raises(GapError):
            await replica.engine.session(live=True)
        assert replica.markers == Markers(1, 1)
        assert replica.get("x") is None
    assert failures == []


async def test_a_refused_token_raises_an_authentication_error_and_is_not_retried(
    tmp_path: Path,
) -> None:
    async def refuse(peer: Peer) -> None:
        await peer.receive("no2.sync.connect")
        await peer.send(
            "no2.sync.error",
            code="DG-1001",
            fatal=True,
            error="DG-1001 failed to validate token: unknown token",
        )
        await peer.ws.close(4401, "not authenticated")

    url, server, failures = await run_peer([refuse])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        stop = asyncio.Event()
        assert failures == []
        with pytest.raises(AuthenticationError, match="failed to validate token") as info:
            await replica.engine.run(stop)
        assert info.value.code == "DG-1001"
        assert info.value.close_code == 4401
        assert "failed to validate token" in replica.status()["last_error"]


async def test_an_unreachable_server_is_retried_with_back_off_while_live(tmp_path: Path) -> None:
    replica = make_replica(
        "ws://127.0.0.1:9", tmp_path / "r.sqlite3", backoff_base=0.01, backoff_cap=0.05
    )
    attempts = 0
    original = replica.engine.session

    async def counting(**kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return await original(**kwargs)

    replica.engine.session = counting  # type: ignore[method-assign]
    await replica.start()
    async with asyncio.timeout(20):
        while attempts < 3:
            await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="live"):
        await replica.sync()  # a live replica syncs on its own
    await replica.close()
    assert isinstance(replica.engine.last_error, SyncError)


def test_back_off_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(4)
    delays = [[backoff_delay(a, base=0.5, cap=30, rng=rng) for _ in range(50)] for a in range(10)]
    for attempt, samples in enumerate(delays):
        ceiling = min(30, 0.5 * 2**attempt)
        assert all(ceiling / 2 <= d <= ceiling for d in samples)
        assert len(set(samples)) > 1  # jitter: reconnecting replicas do not stampede together


def _versions(docs: list[dict[str, Any]]) -> list[Any]:
    from datagate_replica.sync import parse_feed

    versions, rejected = parse_feed({"changeSet": docs, "tombstoneMap": {}})
    assert rejected == []
    return versions


async def test_a_frame_the_server_refuses_is_split_and_the_culprit_alone_is_rejected(
    tmp_path: Path,
) -> None:
    """A change the server closes the session over (here DG-2009) never blocks the journal:
    the changes of the refused frame are sent one per frame, and the one refused alone is kept
    with the server's code (docs/errors.md; issue 14, item 6)."""

    async def refuse_frame(peer: Peer) -> None:
        await peer.connect()
        chunk = await peer.receive("no2.sync.batch.start")
        assert [d["_id"] for d in chunk["feed"]["changeSet"]] == ["a", "b", "c"]
        await peer.send(
            "no2.sync.error", code="DG-2009", fatal=True, error="DG-2009 JSON nests too deep"
        )
        await peer.ws.close(4400, "DG-2009")

    async def one_by_one(peer: Peer) -> None:
        await peer.connect()
        chunks = []
        first = await peer.receive("no2.sync.batch.start")
        chunks.append([d["_id"] for d in first["feed"]["changeSet"]])
        await peer.send(
            "no2.sync.batch.ack", first, receipt={"added": ["a"], "removed": [], "rejected": []}
        )
        second = await peer.receive("no2.sync.batch.continue")  # only after the first's ack
        chunks.append([d["_id"] for d in second["feed"]["changeSet"]])
        assert chunks == [["a"], ["b"]]
        await peer.send(
            "no2.sync.error", code="DG-2009", fatal=True, error="DG-2009 JSON nests too deep"
        )
        await peer.ws.close(4400, "DG-2009")

    async def the_rest(peer: Peer) -> None:
        await peer.connect()
        chunks = await peer.accept_push()
        assert [[d["_id"] for d in c["feed"]["changeSet"]] for c in chunks[:-1]] == [["c"]]
        await peer.pull([], FRESH)

    url, server, failures = await run_peer([refuse_frame, one_by_one, the_rest])
    async with server, make_replica(url, tmp_path / "r.sqlite3") as replica:
        for doc_id in ("a", "b", "c"):
            replica.put(doc_id, n=1)
        for _ in range(2):
            with pytest.raises(SyncError, match="DG-2009"):
                await replica.sync()
        report = await replica.sync()
        assert failures == []
        status = replica.status()
        assert status["journal"] == 0
        assert [(r["id"], r["code"]) for r in status["rejected"]] == [("b", "DG-2009")]
        assert report.pushed == 1
        assert replica.store.suspects() == set()
