"""Nitrite G3 replicas against a real daphne (docs/protocol.md section 10, NITRITE-G3.md).

The G3 replicas are `tests/g3_client.G3Replica`: strict about every key of every frame, polling
with a fresh socket every second, as Nitrite's Java client does. `datagate-replica` SDK
replicas share the collection with them. Runs on SQLite, and on PostgreSQL with `-m storage`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from datagate_replica import AsyncReplica

from replication.models import ErrorEvent, JournalEntry, ReplicaSession
from replication.selectors import collection_state
from replication.services.engine import collection_get_or_create
from tests.support.g3_client import G3Replica
from tests.support.server_processes import DaphneServer

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.e2e, pytest.mark.storage]


@pytest.fixture(scope="module")
def shared_daphne(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaphneServer]:
    """One daphne for the module (starting one costs seconds on a loaded machine)."""
    with django_db_blocker.unblock():
        server = DaphneServer.start(tmp_path=tmp_path_factory.mktemp("g3-e2e"))
    yield server
    server.stop()


@pytest.fixture
def daphne(shared_daphne: DaphneServer, transactional_db: Any) -> DaphneServer:
    return shared_daphne


@pytest.fixture
def notes(tenant: Any) -> Any:
    return collection_get_or_create(tenant=tenant, name="notes")[0]


@pytest.fixture
def writer_token(member: Any, issue_token: Any, notes: Any) -> str:
    return str(issue_token(member("writer", "writer"), "read write"))


@pytest.fixture
async def g3(daphne: DaphneServer, writer_token: str) -> AsyncIterator[Callable[..., G3Replica]]:
    opened: list[G3Replica] = []

    def open_replica(name: str, **options: Any) -> G3Replica:
        options.setdefault("user", "writer")
        options.setdefault("token", writer_token)
        replica = G3Replica(
            host="127.0.0.1",
            port=daphne.port,
            tenant="acme",
            collection="notes",
            name=name,
            **options,
        )
        opened.append(replica)
        return replica

    yield open_replica
    for replica in opened:
        await replica.stop()
    for replica in opened:
        assert not replica.problems, replica.problems


@pytest.fixture
async def sdk(
    daphne: DaphneServer, writer_token: str, tmp_path: Path
) -> AsyncIterator[Callable[..., AsyncReplica]]:
    opened: list[AsyncReplica] = []

    def open_replica(name: str) -> AsyncReplica:
        replica = AsyncReplica(
            daphne.ws_url,
            "acme",
            "notes",
            writer_token,
            path=tmp_path / f"{name}.sqlite3",
            name=name,
            reply_timeout=30,
        )
        opened.append(replica)
        return replica

    yield open_replica
    for replica in opened:
        await replica.close()


def server_documents(collection_id: int) -> dict[str, Any]:
    return dict(collection_state(collection_id=collection_id)["documents"])


async def test_a_g3_push_of_100_documents_reaches_a_g3_and_an_sdk_replica(
    g3: Callable[..., G3Replica], sdk: Callable[..., AsyncReplica], notes: Any
) -> None:
    first, second = g3("first"), g3("second", trailing_slash=True)
    ids = [first.put(title=f"note {n}", n=n, tags=["a", "b"], nested={"k": n}) for n in range(100)]
    first.start()
    second.start()
    await second.wait_for(lambda: len(second.docs) == 100, what="100 documents at the 2nd G3")
    stored = await database_sync_to_async(server_documents)(notes.pk)
    assert set(stored) == set(ids)
    assert stored[ids[7]]["body"] == {
        "title": "note 7",
        "n": 7,
        "tags": ["a", "b"],
        "nested": {"k": 7},
    }
    assert second.fields(ids[7]) == first.fields(ids[7])
    # 10 chunks of 10, every id acknowledged: nothing left to resend.
    await first.wait_for(lambda: not first.ledger_added, what="the ledger to empty")
    # The second replica pushes back what it pulled (G3 does: its push delta is every document
    # modified past its last local marker) until its marker has passed them all. Under its own
    # replica id, that echo changes nothing on the server: documents keep their writer's origin.
    await second.wait_for(
        lambda: second.local_markers[0] >= max(d["_modified"] for d in second.docs.values()),
        what="the second replica's echo",
    )
    journal = await database_sync_to_async(
        lambda: list(JournalEntry.objects.values_list("origin", flat=True))
    )()
    assert sum(s.pushed_docs for s in second.sessions) > 0  # it did push some back
    assert journal == [first.replica_id] * 100
    replica = sdk("sdk")
    await replica.sync()
    assert {doc["_id"] for doc in replica.list()} == set(ids)
    assert (replica.get(ids[7]) or {}).get("nested") == {"k": 7}
    # Every frame the G3 replicas were sent had exactly G3's keys (the client checks each),
    # and no document carried `_origin`.
    frames = [f for r in (first, second) for s in r.sessions for f in s.frames]
    docs = [d for f in frames for d in (f.get("feed") or {}).get("changeSet", [])]
    assert docs
    assert not any("_origin" in d for d in docs)


def replica_sessions(replica_id: str) -> int:
    return ReplicaSession.objects.filter(replica__replica_id=replica_id).count()


async def test_polling_keeps_one_session_record_per_replica(g3: Callable[..., G3Replica]) -> None:
    replica = g3("poller")
    replica.put(title="x")
    replica.start()
    await replica.wait_for(
        lambda: sum(s.completed for s in replica.sessions) >= 3, what="three polls"
    )
    assert await database_sync_to_async(replica_sessions)(replica.replica_id) == 1


async def test_two_sockets_opened_together_both_finish_their_session(
    g3: Callable[..., G3Replica], notes: Any
) -> None:
    replica = g3("twice")
    ids = [replica.put(n=n) for n in range(25)]
    await asyncio.gather(replica.open_session(), replica.open_session())
    assert [s.completed for s in replica.sessions] == [True, True]
    assert all(s.error is None for s in replica.sessions)
    assert set(await database_sync_to_async(server_documents)(notes.pk)) == set(ids)
    assert not replica.ledger_added


async def test_updates_and_deletes_flow_both_ways_between_g3_and_sdk_replicas(
    g3: Callable[..., G3Replica], sdk: Callable[..., AsyncReplica]
) -> None:
    nitrite, own = g3("nitrite"), sdk("own")
    a, b, c = (nitrite.put(title=t) for t in ("a", "b", "c"))
    await nitrite.sync_once()
    await own.sync()
    assert {d["_id"] for d in own.list()} == {a, b, c}
    # G3 updates one and deletes one; the SDK replica sees both.
    nitrite.put(a, title="a2")
    nitrite.remove(b)
    await nitrite.sync_once()
    await own.sync()
    assert (own.get(a) or {}).get("title") == "a2"
    assert own.get(b) is None
    # The SDK replica updates one and deletes one; the G3 replica sees both.
    own.put(c, {"title": "c2"})
    own.delete(a)
    await own.sync()
    await nitrite.sync_once()
    assert nitrite.fields(c) == {"title": "c2"}
    assert a not in nitrite.docs
    assert nitrite.tombstones[a].source != "notes"
    # A new document from the SDK, with a NitriteId-shaped id, arrives too.
    d = nitrite.new_id()
    own.put(d, {"title": "from the sdk"})
    await own.sync()
    await nitrite.sync_once()
    assert nitrite.fields(d) == {"title": "from the sdk"}
    await own.sync()
    assert {x["_id"] for x in own.list()} == set(nitrite.docs) == {c, d}


async def test_a_change_reaches_the_other_kind_of_replica_within_one_g3_poll(
    g3: Callable[..., G3Replica], sdk: Callable[..., AsyncReplica]
) -> None:
    nitrite, own = g3("poller"), sdk("live")
    await own.start()
    await own.wait_live(30)
    nitrite.start()
    await nitrite.wait_for(lambda: any(s.completed for s in nitrite.sessions), what="a G3 sync")

    # SDK -> G3: committed (the live replica's journal is empty), then the first G3 session
    # that starts afterwards brings it: within one polling period of the commit.
    doc_id = nitrite.new_id()
    own.put(doc_id, {"title": "live"})
    await nitrite.wait_for(lambda: own.store.journal_size() == 0, what="the SDK push")
    committed, polls_before = time.monotonic(), len(nitrite.sessions)
    await nitrite.wait_for(lambda: doc_id in nitrite.docs, what="the SDK change at G3")
    session, arrived = nitrite.arrived(doc_id) or (0, 0.0)
    assert session <= polls_before + 1
    g3_delay = arrived - committed

    # G3 -> SDK: the next G3 session pushes it, and the live SDK replica has it at once.
    polls_before = len(nitrite.sessions)
    written = time.monotonic()
    other = nitrite.put(title="from g3")
    await nitrite.wait_for(lambda: own.get(other) is not None, what="the G3 change at the SDK")
    sdk_delay = time.monotonic() - written
    pushed_in = min(s.number for s in nitrite.sessions if other in s.pushed_ids)
    assert pushed_in <= polls_before + 1
    log.info("SDK->G3 %.2f s, G3->SDK %.2f s (G3 polling period 1 s)", g3_delay, sdk_delay)


async def test_a_bad_token_and_a_wrong_user_segment_show_their_codes_to_g3(
    g3: Callable[..., G3Replica],
) -> None:
    bad = g3("bad", token="not-a-token")
    bad.start()
    await bad.wait_for(lambda: len(bad.errors) >= 2, what="two polls refused")
    assert bad.errors[0].startswith("DG-1001 failed to validate token")
    assert bad.sessions[0].close_reason == bad.errors[0]
    assert len(bad.errors[0]) <= 123
    stranger = g3("stranger", user="someone-else")
    await stranger.sync_once()
    assert (stranger.errors[0] or "").startswith("DG-1003 user 'someone-else'")


async def test_a_read_only_g3_users_refused_changes_end_as_the_servers_version(
    g3: Callable[..., G3Replica], member: Any, issue_token: Any, notes: Any
) -> None:
    writer = g3("writer")
    kept, doomed = writer.put(v="server"), writer.put(v="server too")
    await writer.sync_once()
    reader_token = await database_sync_to_async(issue_token)(
        await database_sync_to_async(member)("reader", "reader"), "read write"
    )
    reader = g3("reader", user="reader", token=reader_token)
    await reader.sync_once()
    assert reader.fields(kept) == {"v": "server"}
    # Offline, the reader edits one, deletes the other and makes a new one.
    reader.put(kept, v="mine")
    reader.remove(doomed)
    mine = reader.put(v="new")
    log = await reader.sync_once()
    assert log.completed
    assert not reader.ledger_added
    assert not reader.ledger_removed
    assert reader.fields(kept) == {"v": "server"}
    assert mine not in reader.docs
    assert reader.fields(doomed) == {"v": "server too"}
    # A G3 replica pushes what it pulled again; a few sessions on, it pushes nothing and
    # holds what the server holds.
    for _ in range(3):
        log = await reader.sync_once()
    assert (log.pushed_docs, log.pushed_tombstones) == (0, 0)
    stored = await database_sync_to_async(server_documents)(notes.pk)
    assert {i: reader.fields(i) for i in reader.docs} == {i: d["body"] for i, d in stored.items()}
    codes = await database_sync_to_async(
        lambda: set(
            ErrorEvent.objects.filter(user__username="reader").values_list("code", flat=True)
        )
    )()
    assert codes == {"DG-3002"}
