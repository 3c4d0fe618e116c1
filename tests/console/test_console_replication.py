"""The console acting on live replication sessions (issue 3's consumer): disconnect and the
feed latency the dashboard charts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse

from accounts.access import System
from datagate_site.asgi import application
from replication.models import FeedLatencyMinute, Replica, ReplicaSession
from replication.services.documents import document_put
from tests.support.wire_replica import DISCONNECT, CommunicatorTransport, WireReplica

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def live_replica(token: str, origin: str) -> WireReplica:
    communicator = WebsocketCommunicator(
        application,
        "/ws/datagate/acme/notes/",
        headers=[(b"origin", b"http://testserver"), (b"host", b"testserver")],
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    replica = WireReplica(
        transport=CommunicatorTransport(communicator),
        token=token,
        tenant="acme",
        collection="notes",
        origin=origin,
    )
    await replica.sync()
    return replica


def console_post(user: Any, url: str) -> int:
    client = Client()
    client.force_login(user)
    return client.post(url).status_code


async def test_console_disconnect_ends_the_live_session_with_disconnect_and_1000(
    member: Any, collection: Any, issue_token: Any
) -> None:
    admin = await database_sync_to_async(member)("ada", "admin")
    writer = await database_sync_to_async(member)("walt", "writer")
    token = await database_sync_to_async(issue_token)(writer, "read write")
    phone = await live_replica(token, "phone-1")
    other = await live_replica(token, "tablet-1")
    row = await database_sync_to_async(Replica.objects.get)(replica_id="phone-1")
    assert row.online

    url = reverse("console:replica_disconnect", kwargs={"tenant": "acme", "pk": row.pk})
    assert await database_sync_to_async(console_post)(admin, url) == 302

    await phone.expect(DISCONNECT)
    assert await phone.expect_close() == 1000
    deadline = asyncio.get_running_loop().time() + 20
    while (await database_sync_to_async(Replica.objects.get)(pk=row.pk)).online:
        assert asyncio.get_running_loop().time() < deadline, "replica still online"
        await asyncio.sleep(0.1)
    session = await database_sync_to_async(ReplicaSession.objects.get)(replica_id=row.pk)
    assert session.ended_at is not None
    # The other replica of the same user is untouched and still receives changes.
    await database_sync_to_async(document_put)(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="after",
        body={"x": 1},
        origin="console:ada",
    )
    await other.feed_until(1)
    assert other.documents["after"]["x"] == 1
    await other.disconnect()


async def test_live_feed_acks_record_feed_latency_for_the_dashboard(
    member: Any, collection: Any, issue_token: Any
) -> None:
    writer = await database_sync_to_async(member)("walt", "writer")
    token = await database_sync_to_async(issue_token)(writer, "read write")
    phone = await live_replica(token, "phone-1")
    for i in range(3):
        await database_sync_to_async(document_put)(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=f"d{i}",
            body={"i": i},
            origin="console:ada",
        )
        await phone.feed_until(i + 1)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        rows = await database_sync_to_async(list)(
            FeedLatencyMinute.objects.filter(collection=collection)
        )
        if sum(r.acks for r in rows) >= 3:
            break
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.1)
    assert all(0 <= r.max_ms < 20_000 for r in rows)
    await phone.disconnect()
