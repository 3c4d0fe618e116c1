"""Two daphne processes sharing PostgreSQL and Redis (required in CI, skipped elsewhere).

The live feed crosses processes through the Redis doorbell; the database poll is turned off
(600 s) so that only the doorbell can deliver in time.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from tests.support.external_services import require_postgres, require_redis
from tests.support.server_processes import DaphneServer, manage
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.services, pytest.mark.e2e]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh PostgreSQL database, migrated, with an admin token; two daphnes on it."""
    import psycopg

    base = urlparse(require_postgres())
    redis_url = require_redis()
    name = f"dg_cluster_{uuid.uuid4().hex[:10]}"
    server_url = urlunparse(base._replace(path="/postgres"))
    database_url = urlunparse(base._replace(path=f"/{name}"))
    tmp = Path(tmp_path_factory.mktemp("cluster"))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    servers: list[DaphneServer] = []
    try:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "DATAGATE_SQLITE_PATH"}
        }
        extra = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATAGATE_REDIS_PREFIX": f"dg-test-{uuid.uuid4().hex[:8]}",
            "DATAGATE_LIVE_POLL_INTERVAL": "600",
            "DATAGATE_DATA_DIR": str(tmp / "data"),
        }
        env.update(extra)
        manage(env, "migrate", "--no-input")
        manage(env, "datagate_bootstrap")
        token = manage(env, "datagate_token", "admin").strip()
        for server_name in ("a", "b"):
            servers.append(DaphneServer.start(tmp_path=tmp, extra_env=extra, name=server_name))
        yield {"token": token, "a": servers[0], "b": servers[1]}
    finally:
        for server in servers:
            server.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def replica_on(server: DaphneServer, token: str, name: str) -> WireReplica:
    transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/demo/shared/")
    return WireReplica(
        transport=transport, token=token, tenant="demo", collection="shared", origin=name
    )


async def test_a_replica_on_one_server_receives_what_the_other_servers_replicas_push(
    cluster: dict[str, Any],
) -> None:
    token = cluster["token"]
    watcher = await replica_on(cluster["a"], token, "watcher")
    await watcher.sync()
    pushers = [await replica_on(cluster["b"], token, f"pusher-{n}") for n in range(2)]

    async def work(replica: WireReplica, n: int) -> None:
        for i in range(30):
            replica.put(f"{replica.origin}-{i}", i=i)
        await replica.connect()
        await replica.push(chunk_size=10)
        await replica.pull()
        for round_ in range(8):
            for i in range(4):
                replica.put(f"shared-{i}", by=replica.origin, round=round_)
            replica.delete(f"{replica.origin}-{round_}")
            await replica.send_feed()

    await asyncio.gather(*(work(replica, n) for n, replica in enumerate(pushers)))
    for replica in pushers:
        await replica.send_feed()  # picks up feeds the other pusher caused
    # The server's position now, from a fresh session's connect.ack: the pushers' own markers
    # may still be behind their last changes (live feeds wait for acks, docs/protocol.md 6).
    probe = await replica_on(cluster["a"], token, "probe")
    head = (await probe.connect())["endMarkers"]["collectionMarker"]
    await probe.disconnect()
    # In order and without gaps: next_feed checks every feed starts where the last ended.
    feeds = await watcher.feed_until(head, timeout=30)
    assert feeds, "the doorbell crossed no process"
    for replica in (watcher, *pushers):
        await replica.feed_until(head, timeout=30)
        assert replica.markers["collectionMarker"] == head
    assert watcher.state() == pushers[0].state() == pushers[1].state(), state_differences(
        watcher, *pushers
    )

    # The watcher goes away with its markers; what it missed is exactly what it gets back.
    stored_markers = dict(watcher.markers)
    stored_documents = dict(watcher.documents)
    assert await watcher.disconnect() == 1000
    missed = {"late-1", "late-2", f"{pushers[0].origin}-20"}
    pushers[0].put("late-1", v=1)
    pushers[0].put("late-2", v=2)
    pushers[0].delete(f"{pushers[0].origin}-20")
    await pushers[0].send_feed()
    back = await replica_on(cluster["a"], token, "watcher")
    back.markers, back.documents = stored_markers, stored_documents
    await back.connect()
    pulled = await back.pull()
    assert pulled["reset"] is False
    received = set()
    for chunk in pulled["chunks"]:
        received |= {d["_id"] for d in chunk["feed"]["changeSet"]}
        received |= set(chunk["feed"]["tombstoneMap"])
    assert received == missed
    assert back.markers["collectionMarker"] == head + 3
    for replica in [back, *pushers]:
        await replica.disconnect()


async def test_an_idle_live_replica_still_hears_the_doorbell_after_a_minute(
    cluster: dict[str, Any],
) -> None:
    token = cluster["token"]
    idle = await replica_on(cluster["a"], token, "idle")
    await idle.sync()
    writer = await replica_on(cluster["b"], token, "writer")
    await writer.sync()
    await asyncio.sleep(65)
    writer.put("after-idle", v=1)
    await writer.send_feed()
    # The poll is off (600 s): only the Redis doorbell can bring this within the deadline.
    await idle.feed_until(idle.markers["collectionMarker"] + 1, timeout=30)
    assert idle.documents["after-idle"]["v"] == 1
    for server in (cluster["a"], cluster["b"]):
        assert "Traceback" not in server.log()


def state_differences(*replicas: WireReplica) -> list[tuple[str, str, list[Any]]]:
    """The ids whose document or tombstone differs between the replicas, with each one's."""
    states = [replica.state() for replica in replicas]
    differences = []
    for kind in ("documents", "tombstones"):
        for doc_id in sorted(set().union(*(state[kind] for state in states))):
            held = [state[kind].get(doc_id) for state in states]
            if any(value != held[0] for value in held):
                differences.append((kind, doc_id, held))
    return differences
