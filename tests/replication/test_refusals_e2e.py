"""Clean refusals and clean closes on a real daphne (issue 14, items 8 and 9): unknown
websocket and HTTP paths, and a topics socket closed normally, leave no traceback and no
error event."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets
from datagate_replica.topics import TopicsClient

from replication.models import ErrorEvent
from tests.support.server_processes import DaphneServer

pytestmark = [pytest.mark.e2e]

CLOSES = 20


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def handshake_status(url: str) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, open_timeout=20):
            pass
    return int(refused.value.response.status_code)


def test_unknown_paths_are_refused_without_a_traceback(daphne: DaphneServer) -> None:
    async def sockets() -> list[int]:
        return [
            await handshake_status(f"{daphne.ws_url}{path}")
            for path in ("/ws/nowhere/", "/ws/datagate/acme/", "/nothing", "/ws/topics/")
        ]

    assert asyncio.run(sockets()) == [403, 403, 403, 403]
    status, _ = http_status(f"{daphne.http_url}/no/such/page/")
    assert status == 404
    status, body = http_status(f"{daphne.http_url}/api/v1/no/such/thing/")
    assert status == 404
    assert '"DG-8001"' in body
    log = daphne.log()
    assert "Traceback" not in log
    assert "No route found" not in log


def test_by_default_only_the_servers_own_origin_may_open_a_socket(daphne: DaphneServer) -> None:
    """DATAGATE_ALLOWED_ORIGINS unset, DJANGO_ALLOWED_HOSTS `*` (issue 14, item 7)."""
    url = f"{daphne.ws_url}/ws/topics/acme/"

    async def opens(origin: str | None) -> bool:
        try:
            async with websockets.connect(url, origin=origin, open_timeout=20):  # type: ignore[arg-type]
                return True
        except websockets.InvalidStatus as refused:
            status = refused.response.status_code
        assert status == 403
        return False

    async def check() -> list[bool]:
        return [
            await opens(daphne.http_url),  # a page of this server (the console)
            await opens(None),  # the SDK, native apps
            await opens("https://evil.example.net"),
            await opens(f"http://localhost:{daphne.port + 1}"),
        ]

    assert asyncio.run(check()) == [True, True, False, False]
    assert "Traceback" not in daphne.log()


def test_a_topics_socket_closes_normally_without_an_error(
    daphne: DaphneServer, member: Any, issue_token: Any
) -> None:
    token = str(issue_token(member("alice", "writer"), "topics"))

    async def talk() -> list[int | None]:
        codes: list[int | None] = []
        # Several times: the client's Close crosses the server's (the SDK sends Disconnect and
        # closes at once), and autobahn's abort on that path lost the server's Close frame
        # now and then, more often under load (close 1006; core/daphne_websocket.py).
        for _ in range(CLOSES):
            client = TopicsClient(daphne.ws_url, tenant="acme", token=token, device="d1")
            await client.connect()
            socket = client._socket
            assert socket is not None
            await client.close()  # sends Disconnect; the server closes 1000
            await socket.wait_closed()
            codes.append(socket.close_code)
        return codes

    assert asyncio.run(talk()) == [1000] * CLOSES
    internal = ErrorEvent.objects.filter(code="DG-5003")
    assert not internal.exists(), list(internal.values_list("text", flat=True))
    log = daphne.log()
    assert "invalid type" not in log
    assert "Traceback" not in log
