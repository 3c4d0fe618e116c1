"""The frame limit end to end, with a real daphne (issue 14, item 5; decision 0010).

daphne's own websocket limit (1 MiB) used to drop the connection (1006) before DataGate saw an
oversized frame. Now DATAGATE_MAX_FRAME_BYTES is the only limit, on every daphne command line
(datagate_site/asgi.py installs it): at any size over it the server answers DG-2007 and closes
1009, records the error, and keeps serving; under it, frames over 1 MiB go both ways.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from replication.models import Document, ErrorEvent
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def token(collection: Any, member: Any, issue_token: Any) -> str:
    return str(issue_token(member("ann", "writer"), "read write"))


async def replica(server: DaphneServer, token: str, name: str) -> WireReplica:
    transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/")
    return WireReplica(
        transport=transport, token=token, tenant="acme", collection="notes", origin=name
    )


async def refused_with_1009(server: DaphneServer, token: str, frame: str | list[str]) -> None:
    """Send `frame` (a list: one message in fragments) after Connect; expect DG-2007, 1009."""
    ann = await replica(server, token, "big")
    await ann.connect()
    transport = ann.transport
    assert isinstance(transport, WebsocketsTransport)
    await transport.socket.send(frame)
    assert await ann.expect_close() == 1009
    assert ann.errors[-1]["code"] == "DG-2007", ann.errors


async def stored_ids() -> set[str]:
    return set(
        await database_sync_to_async(list)(Document.objects.values_list("doc_id", flat=True))
    )


async def test_at_the_default_limit_a_2_mib_frame_gets_dg_2007_and_1009(
    tmp_path: Any, token: str
) -> None:
    server = DaphneServer.start(tmp_path=tmp_path)  # DATAGATE_MAX_FRAME_BYTES: 1 MiB
    try:
        ok = await replica(server, token, "ok")
        ok.put("small", v=1)
        await ok.sync()
        big = {"header": {"messageType": "no2.sync.feed"}, "pad": "x" * (2 * MIB)}
        await refused_with_1009(server, token, json.dumps(big))
        # One message over the limit in 64 KiB fragments, none of them over it alone.
        await refused_with_1009(server, token, ["x" * (64 * 1024)] * 20)
        events = ErrorEvent.objects.filter(code="DG-2007")
        assert await database_sync_to_async(events.count)() == 2
        # The server still serves, and nothing accepted was lost.
        again = await replica(server, token, "again")
        await again.sync()
        assert set(again.documents) == {"small"} == await stored_ids()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


async def test_a_limit_above_1_mib_lets_2_mib_documents_through_both_ways(
    tmp_path: Any, token: str
) -> None:
    server = DaphneServer.start(
        tmp_path=tmp_path, extra_env={"DATAGATE_MAX_FRAME_BYTES": str(3 * MIB)}
    )
    try:
        writer = await replica(server, token, "writer")
        writer.put("two-mib", blob="y" * (2 * MIB))
        await writer.sync()
        assert not writer.journal
        assert await stored_ids() == {"two-mib"}
        # A fresh replica pulls it back in a chunk over 1 MiB.
        reader = await replica(server, token, "reader")
        pulled = await reader.sync()
        assert reader.documents["two-mib"]["blob"] == "y" * (2 * MIB)
        assert pulled is not None
        # Over the new limit: refused the same way.
        await refused_with_1009(server, token, "z" * (3 * MIB + 1))
        assert "Traceback" not in server.log()
    finally:
        server.stop()


async def test_topics_refuse_an_oversized_frame_the_same_way(
    tmp_path: Any, token: str, tenant: Any
) -> None:
    import websockets

    server = DaphneServer.start(tmp_path=tmp_path)
    try:
        async with websockets.connect(f"{server.ws_url}/ws/topics/acme/", max_size=None) as ws:
            await ws.send("t" * (2 * MIB))
            frames = []

            async def receive_until_closed() -> None:
                while True:
                    frames.append(await ws.recv())

            with pytest.raises(websockets.ConnectionClosed) as closed:
                await receive_until_closed()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009
            assert "DG-2007" in "".join(str(f) for f in frames)
        assert "Traceback" not in server.log()
    finally:
        server.stop()
