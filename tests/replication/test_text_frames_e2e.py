"""Text frames that are not UTF-8, end to end with a real daphne.

RFC 6455 (section 8.1): a text message whose payload is not valid UTF-8 fails the connection
with 1007. The server checks it once, when it decodes the message
(`core.daphne_websocket.install_text_decoding`), not also byte by byte as frames arrive; a
message valid as a whole is taken whatever its fragments split, mid code point included.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def token(collection: Any, member: Any, issue_token: Any) -> str:
    return str(issue_token(member("ann", "writer"), "read write"))


async def replica(
    server: DaphneServer,
    token: str,
    origin: str,
    transport: type[WebsocketsTransport] = WebsocketsTransport,
) -> WireReplica:
    return WireReplica(
        transport=await transport.open(f"{server.ws_url}/ws/datagate/acme/notes/"),
        token=token,
        tenant="acme",
        collection="notes",
        origin=origin,
    )


async def close_code_after(server: DaphneServer, fragments: list[bytes]) -> int | None:
    """Send one text message in `fragments` (raw bytes, sent as text frames) and return the
    close code the server answers with (None if it answered and stayed open)."""
    async with websockets.connect(f"{server.ws_url}/ws/datagate/acme/notes/") as ws:
        await ws.send(fragments if len(fragments) > 1 else fragments[0], text=True)
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


def split_bytes(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [data]


INVALID = st.sampled_from(
    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80abc"]
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.text(max_size=20).map(lambda t: t.encode("utf-8", "replace")),
    bad=INVALID,
    cuts=st.lists(st.integers(0, 64), max_size=3),
)
def test_a_text_message_that_is_not_utf_8_is_closed_with_1007_and_the_server_goes_on(
    daphne: DaphneServer, token: str, prefix: bytes, bad: bytes, cuts: list[int]
) -> None:
    import asyncio

    async def run() -> None:
        payload = b'{"header":"' + prefix + bad + b'"}'
        assert await close_code_after(daphne, split_bytes(payload, cuts)) == 1007
        # The server serves the next replica as before.
        ann = await replica(daphne, token, "after")
        ann.put("é☃", v="ü")
        await ann.sync()
        assert not ann.journal

    asyncio.run(run())
    assert "Traceback" not in daphne.log()


class SplitTransport(WebsocketsTransport):
    """Sends each message as UTF-8 (not ASCII-escaped) in two text frames, cut inside the
    first multi-byte code point."""

    async def send(self, text: str) -> None:
        data = json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
        cut = next((i for i in range(1, len(data)) if data[i] & 0xC0 == 0x80), None)
        if cut is None:
            await self.socket.send(data.decode("utf-8"))
        else:
            await self.socket.send([data[:cut], data[cut:]], text=True)


async def test_a_valid_message_split_mid_code_point_is_taken(
    daphne: DaphneServer, token: str
) -> None:
    writer = await replica(daphne, token, "split", SplitTransport)
    writer.put("snow☃", t="é☃𝄞")
    await writer.sync()
    assert not writer.journal
    reader = await replica(daphne, token, "reader")
    await reader.sync()
    assert reader.documents["snow☃"]["t"] == "é☃𝄞"
    assert "Traceback" not in daphne.log()


async def test_after_connect_a_message_that_is_not_utf_8_is_closed_with_1007(
    daphne: DaphneServer, token: str
) -> None:
    ann = await replica(daphne, token, "ann")
    ann.put("kept", v=1)
    await ann.sync()
    transport = ann.transport
    assert isinstance(transport, WebsocketsTransport)
    await transport.socket.send([b'{"header":{"messageType":"', b"\xc3\x28", b'"}}'], text=True)
    assert await ann.expect_close() == 1007
    reader = await replica(daphne, token, "reader")
    await reader.sync()
    assert set(reader.documents) == {"kept"}
    assert "Traceback" not in daphne.log()
