"""Nitrite G3 replicas against a real daphne (docs/protocol.md section 10, NITRITE-G3.md).

The G3 replicas are `tests/g3_client.G3Replica`: strict about every key of every frame, polling
with a fresh socket every second, as Nitrite's Java client does. `datagate-replica` SDK
replicas share the collection with them. Runs on SQLite, and on PostgreSQL with `-m storage`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from datagate_replica import AsyncReplica

from replication.selectors import collection_state
from replication.services import collection_get_or_create
from tests.g3_client import G3Replica
from tests.live_server import DaphneServer

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
    replica = sdk("sdk")
    await replica.sync()
    assert {doc["_id"] for doc in replica.list()} == set(ids)
    assert (replica.get(ids[7]) or {}).get("nested") == {"k": 7}
    # Every frame the G3 replicas were sent had exactly G3's keys (the client checks each),
    # and no document carried `_origin`.
    frames = [f for r in (first, second) for s in r.sessions for f in s.frames]
    docs = [d for f in frames for d in (f.get("feed") or {}).get("changeSet", [])]
    assert docs and not any("_origin" in d for d in docs)
