"""PouchDB 9 (the real client, from npm) syncs with DataGate on a real daphne, beside websocket
replicas: push, pull with checkpoints, updates and deletes, concurrent edits converging on one
winner, live sync both ways, an interrupted pull resuming from its checkpoint, refused writes
and a revoked token (docs/couchdb.md)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from tests.support.fast_accounts import fast_cli_application, person
from tests.support.pouchdb_driver import PouchDriver, require_pouchdb
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def pouch() -> Iterator[Callable[..., Awaitable[Any]]]:
    driver = PouchDriver(require_pouchdb())

    async def call(op: str, **args: Any) -> Any:
        return await asyncio.to_thread(driver.call, op, **args)

    yield call
    driver.close()


@pytest.fixture
def tokens(collection: Any, issue_token: Any) -> dict[str, str]:
    fast_cli_application()
    return {
        "ann": issue_token(person("ann", "acme", "writer"), "read write"),
        "bob": issue_token(person("bob", "acme", "writer"), "read write"),
        "rita": issue_token(person("rita", "acme", "reader"), "read write"),
    }


def remote_url(daphne: DaphneServer, db: str = "notes") -> str:
    return f"{daphne.http_url}/couchdb/acme/{db}"


async def ws_replica(daphne: DaphneServer, token: str, origin: str) -> WireReplica:
    transport = await WebsocketsTransport.open(f"{daphne.ws_url}/ws/datagate/acme/notes/")
    replica = WireReplica(
        transport=transport, token=token, tenant="acme", collection="notes", origin=origin
    )
    await replica.sync()
    return replica


async def server_state() -> dict[str, Any]:
    from replication.models import Collection
    from replication.selectors import collection_state

    def read() -> dict[str, Any]:
        return collection_state(collection_id=Collection.objects.get(name="notes").pk)

    return await sync_to_async(read)()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


def bodies(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        r["id"]: {k: v for k, v in r["doc"].items() if not k.startswith("_")}
        for r in rows
        if not r["id"].startswith("_")
    }


async def test_push_pull_updates_deletes_and_checkpoints(
    daphne: DaphneServer, tokens: dict[str, str], pouch: Any
) -> None:
    await pouch("local", name="a")
    await pouch("remote", name="r", url=remote_url(daphne), token=tokens["ann"])
    await pouch("bulk", db="a", docs=[{"_id": f"n{i}", "i": i} for i in range(30)])
    pushed = await pouch("replicate", **{"from": "a", "to": "r"})
    assert pushed["ok"]
    assert pushed["docs_written"] == 30
    state = await server_state()
    assert len(state["documents"]) == 30
    assert state["documents"]["n7"]["body"] == {"i": 7}

    # A second PouchDB pulls everything, then only what changed since its checkpoint.
    await pouch("local", name="b")
    pulled = await pouch("replicate", **{"from": "r", "to": "b"})
    assert pulled["docs_written"] == 30
    assert bodies(await pouch("all", db="b")) == bodies(await pouch("all", db="a"))
    again = await pouch("replicate", **{"from": "r", "to": "b"})
    assert again["docs_read"] == 0

    # Updates and deletes, both ways.
    doc = await pouch("get", db="a", id="n1")
    await pouch("put", db="a", doc={**doc, "i": 100})
    await pouch("remove", db="a", id="n2")
    await pouch("replicate", **{"from": "a", "to": "r"})
    state = await server_state()
    assert state["documents"]["n1"]["body"] == {"i": 100}
    assert "n2" in state["tombstones"]
    replica = await ws_replica(daphne, tokens["bob"], "phone")
    replica.put("n3", i=300)
    replica.delete("n4")
    await replica.send_feed()
    pulled = await pouch("replicate", **{"from": "r", "to": "b"})
    assert pulled["docs_read"] == 4
    mine = bodies(await pouch("all", db="b"))
    assert mine["n1"] == {"i": 100}
    assert mine["n3"] == {"i": 300}
    assert "n2" not in mine
    assert "n4" not in mine
    # And PouchDB edits what the websocket replica wrote as a plain update.
    doc = await pouch("get", db="b", id="n3")
    await pouch("put", db="b", doc={**doc, "i": 301})
    pushed = await pouch("replicate", **{"from": "b", "to": "r"})
    assert pushed["docs_written"] == 1
    assert pushed["doc_write_failures"] == 0
    assert (await server_state())["documents"]["n3"]["body"] == {"i": 301}
    await replica.disconnect()


async def test_concurrent_edits_on_two_pouchdbs_and_a_websocket_replica_converge(
    daphne: DaphneServer, tokens: dict[str, str], pouch: Any
) -> None:
    await pouch("remote", name="r", url=remote_url(daphne), token=tokens["ann"])
    for name in ("a", "b"):
        await pouch("local", name=name)
    await pouch("put", db="a", doc={"_id": "x", "v": "base"})
    await pouch("replicate", **{"from": "a", "to": "r"})
    await pouch("replicate", **{"from": "r", "to": "b"})
    replica = await ws_replica(daphne, tokens["bob"], "phone")
    assert replica.documents["x"]["v"] == "base"

    # Three concurrent edits of the same document.
    for name in ("a", "b"):
        doc = await pouch("get", db=name, id="x")
        await pouch("put", db=name, doc={**doc, "v": name})
    replica.put("x", v="ws")
    await replica.send_feed()
    await pouch("replicate", **{"from": "a", "to": "r"})
    await pouch("replicate", **{"from": "b", "to": "r"})
    for _ in range(2):  # each side pulls what the other pushed
        for name in ("a", "b"):
            await pouch("replicate", **{"from": "r", "to": name})
            await pouch("replicate", **{"from": name, "to": "r"})

    winner = (await server_state())["documents"]["x"]["body"]["v"]
    for name in ("a", "b"):
        (row,) = await pouch("all", db=name)
        assert row["doc"]["v"] == winner, name
        assert row["conflicts"] == [], name
    await eventually(lambda: _ws_has(replica, winner))
    assert replica.documents["x"]["v"] == winner
    await replica.disconnect()


async def _ws_has(replica: WireReplica, value: str) -> bool:
    if replica.documents.get("x", {}).get("v") == value:
        return True
    with contextlib.suppress(TimeoutError):
        await replica.next_feed(timeout=0.5)
    return replica.documents.get("x", {}).get("v") == value


async def test_live_sync_both_ways_with_a_websocket_replica(
    daphne: DaphneServer, tokens: dict[str, str], pouch: Any
) -> None:
    await pouch("remote", name="r", url=remote_url(daphne), token=tokens["ann"])
    await pouch("local", name="a")
    replica = await ws_replica(daphne, tokens["bob"], "phone")
    await pouch("sync_start", id="s", a="a", b="r")

    replica.put("from-ws", text="hello")
    await replica.send_feed()

    async def pouch_has_it() -> bool:
        return "from-ws" in bodies(await pouch("all", db="a"))

    await eventually(pouch_has_it)

    await pouch("put", db="a", doc={"_id": "from-pouch", "text": "hi"})

    async def replica_has_it() -> bool:
        with contextlib.suppress(TimeoutError):
            await replica.next_feed(timeout=0.5)
        return "from-pouch" in replica.documents

    await eventually(replica_has_it)
    assert replica.documents["from-pouch"]["text"] == "hi"
    record = await pouch("record", id="s")
    assert record["errors"] == []
    await pouch("stop", id="s")
    await replica.disconnect()


async def test_an_interrupted_pull_resumes_from_its_checkpoint(
    daphne: DaphneServer, tokens: dict[str, str], pouch: Any
) -> None:
    await pouch("remote", name="r", url=remote_url(daphne), token=tokens["ann"])
    await pouch("local", name="seed")
    await pouch("bulk", db="seed", docs=[{"_id": f"d{i:03}", "i": i} for i in range(60)])
    await pouch("replicate", **{"from": "seed", "to": "r"})

    await pouch("local", name="a")
    first = await pouch(
        "replicate_cancel_after",
        **{"from": "r", "to": "a", "opts": {"batch_size": 10, "batches_limit": 1}, "changes": 20},
    )
    assert 20 <= first["seen"] < 60
    held = len(await pouch("all", db="a"))
    assert held < 60
    rest = await pouch("replicate", **{"from": "r", "to": "a", "opts": {"batch_size": 10}})
    assert rest["docs_read"] <= 60 - 20  # started at the checkpoint, not from zero
    assert len(await pouch("all", db="a")) == 60


async def test_refused_writes_are_denied_per_document(
    daphne: DaphneServer, tokens: dict[str, str], pouch: Any
) -> None:
    await pouch("remote", name="r", url=remote_url(daphne), token=tokens["rita"])
    await pouch("local", name="a")
    await pouch("bulk", db="a", docs=[{"_id": "one", "i": 1}, {"_id": "two", "i": 2}])
    result = await pouch("replicate", **{"from": "a", "to": "r"})
    assert result["doc_write_failures"] == 2
    assert result["docs_written"] == 0
    assert {e["name"] for e in result["errors"]} == {"forbidden"}
    assert (await server_state())["documents"] == {}


async def test_a_revoked_token_ends_live_sync(
    daphne: DaphneServer, tokens: dict[str, str], pouch: Any
) -> None:
    from accounts.services import token_revoke

    await pouch("remote", name="r", url=remote_url(daphne), token=tokens["ann"])
    await pouch("local", name="a")
    await pouch("live_start", id="pull", **{"from": "r", "to": "a"})
    replica = await ws_replica(daphne, tokens["bob"], "phone")
    replica.put("before", n=1)
    await replica.send_feed()

    async def has(doc_id: str) -> bool:
        return doc_id in bodies(await pouch("all", db="a"))

    await eventually(lambda: has("before"))
    await sync_to_async(token_revoke)(raw_token=tokens["ann"])

    async def ended() -> bool:
        record = await pouch("record", id="pull")
        return record["done"] is not None

    await eventually(ended, timeout=40)
    record = await pouch("record", id="pull")
    assert record["done"]["error"]["status"] == 401
    replica.put("after", n=2)
    await replica.send_feed()
    await asyncio.sleep(1)
    assert not await has("after")
    await replica.disconnect()
