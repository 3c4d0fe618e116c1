"""Live topic delivery across daphne processes: Redis rings the bell, the database is the truth.

Marked `storage` as well, so `make test` runs them on SQLite and again on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from datagate_replica.topics import TopicsClient

from tests.support.external_services import require_redis
from tests.support.server_processes import DaphneServer

pytestmark = [pytest.mark.e2e, pytest.mark.storage]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def token(member: Any, issue_token: Any) -> str:
    return str(issue_token(member("alice", "writer"), "topics"))


def two_servers(tmp_path: Any, env: dict[str, str]) -> list[DaphneServer]:
    servers: list[DaphneServer] = []
    try:
        for name in ("a", "b"):
            servers.append(DaphneServer.start(tmp_path=tmp_path, extra_env=env, name=name))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


async def publish_on_one_receive_on_the_other(
    a: DaphneServer, b: DaphneServer, token: str, count: int
) -> list[Any]:
    publisher = TopicsClient(a.ws_url, tenant="acme", token=token, device="pub")
    subscriber = TopicsClient(b.ws_url, tenant="acme", token=token, device="sub")
    async with publisher, subscriber:
        await publisher.create("wire")
        async with subscriber.subscribe("wire", start="latest", auto_commit=True) as stream:
            for n in range(count):
                await publisher.publish("wire", [n])
            got = []
            async with asyncio.timeout(30):
                async for message in stream:
                    got.append(message.payload)
                    if len(got) == count:
                        break
    return got


def test_live_delivery_crosses_daphne_processes_through_redis(
    transactional_db: Any, tmp_path: Any, token: str
) -> None:
    redis_url = require_redis()
    # A poll too slow to matter: delivery within the deadline is the doorbell's work.
    env = {
        "REDIS_URL": redis_url,
        "DATAGATE_REDIS_PREFIX": f"dg-test-{uuid.uuid4().hex[:8]}",
        "DATAGATE_TOPIC_POLL_INTERVAL": "600",
    }
    a, b = two_servers(tmp_path, env)
    try:
        got = asyncio.run(publish_on_one_receive_on_the_other(a, b, token, 20))
        assert got == list(range(20))
    finally:
        a.stop()
        b.stop()


def test_a_lost_doorbell_only_delays_delivery(
    transactional_db: Any, tmp_path: Any, token: str
) -> None:
    # Two processes with in-memory layers: no bell ever crosses between them. The subscriber's
    # process still finds the messages in the database on its periodic poll.
    env = {"DATAGATE_TOPIC_POLL_INTERVAL": "0.5"}
    a, b = two_servers(tmp_path, env)
    try:
        got = asyncio.run(publish_on_one_receive_on_the_other(a, b, token, 5))
        assert got == list(range(5))
    finally:
        a.stop()
        b.stop()
