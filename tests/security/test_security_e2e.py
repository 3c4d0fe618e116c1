"""Security on a real daphne process: Origin check, failed and successful auth, revocation of
a live session, and no token in the server's log (at DEBUG level)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from websockets.exceptions import InvalidHandshake

from accounts.access import System
from accounts.services import token_revoke
from replication.services.documents import document_put
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import ERROR, Closed, WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


async def test_origins_auth_and_revocation_on_a_real_server(
    tmp_path: Any, collection: Any, member: Any, issue_token: Any
) -> None:
    def seed() -> str:
        writer = member("wendy", "writer")
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id="a",
            body={"v": 1},
            origin="seed",
        )
        return str(issue_token(writer, "read write"))

    token = await database_sync_to_async(seed)()
    bogus = "bogus-" + "x" * 40
    server = DaphneServer.start(
        tmp_path=tmp_path,
        extra_env={
            "DATAGATE_ALLOWED_ORIGINS": "https://app.example.com",
            "DATAGATE_SESSION_RECHECK_INTERVAL": "0.5",
            "DATAGATE_LOG_LEVEL": "DEBUG",
        },
    )
    url = f"{server.ws_url}/ws/datagate/acme/notes/"
    try:
        # A page on another site cannot even open the socket.
        with pytest.raises(InvalidHandshake):
            await WebsocketsTransport.open(url, origin="https://evil.example.net")

        # A bogus token is refused with its code.
        refused = WireReplica(
            transport=await WebsocketsTransport.open(url, origin="https://app.example.com"),
            token=bogus,
            tenant="acme",
            collection="notes",
            timeout=20,
        )
        await refused.send(
            refused.message("no2.sync.connect", authToken=bogus, replicaName="r", capabilities=[])
        )
        error = await refused.expect(ERROR)
        assert error["code"] == "DG-1001"
        assert await refused.expect_close() == 4401

        # A good one syncs; revoking it closes the live session within seconds.
        replica = WireReplica(
            transport=await WebsocketsTransport.open(url),
            token=token,
            tenant="acme",
            collection="notes",
            capabilities=["live"],
            timeout=20,
        )
        await replica.sync()
        assert set(replica.documents) == {"a"}
        await database_sync_to_async(token_revoke)(raw_token=token)
        started = time.monotonic()

        async def receive_until_closed() -> None:
            while True:
                await replica.receive(20)

        with pytest.raises(Closed) as closed:
            await receive_until_closed()
        assert closed.value.code == 4401
        assert replica.errors[-1]["code"] == "DG-1001"
        assert time.monotonic() - started < 15
    finally:
        server.stop()
    log = server.log()
    assert "DEBUG" in log or "INFO" in log, "the server logged nothing: the check proves nothing"
    assert token not in log
    assert bogus not in log
