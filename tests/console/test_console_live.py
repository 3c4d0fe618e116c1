"""The dashboard's websocket: session authentication, live fragments, doorbell-driven pushes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from accounts.access import System
from datagate_site.asgi import application
from replication.services.documents import document_put

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(path: str, cookie: str | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def test_member_receives_rendered_fragments_and_a_push_after_a_change(
    member: Any, collection: Any
) -> None:
    reader = await database_sync_to_async(member)("rita", "reader")
    cookie = await database_sync_to_async(session_cookie)(reader)
    ws = communicator("/ws/console/acme/", cookie)
    connected, _ = await ws.connect(timeout=10)
    assert connected
    first = await ws.receive_json_from(timeout=20)
    assert set(first["live"]) == {"collections", "charts", "online", "errors"}
    assert 'data-stat="seq">0<' in first["live"]["collections"]
    await database_sync_to_async(document_put)(
        actor=System("test"), collection_id=collection.pk, doc_id="a", body={}, origin="test"
    )
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        update = await ws.receive_json_from(timeout=20)
        if 'data-stat="seq">1<' in update["live"]["collections"]:
            break
        assert asyncio.get_running_loop().time() < deadline
    await ws.disconnect()


async def test_collection_socket_shows_that_collection_only(member: Any, collection: Any) -> None:
    admin = await database_sync_to_async(member)("ada", "admin")
    cookie = await database_sync_to_async(session_cookie)(admin)
    ws = communicator(f"/ws/console/acme/{collection.name}/", cookie)
    connected, _ = await ws.connect(timeout=10)
    assert connected
    first = await ws.receive_json_from(timeout=20)
    assert 'data-collection="notes"' in first["live"]["collections"]
    await ws.disconnect()


@pytest.mark.parametrize("who", ["anonymous", "outsider", "missing-collection"])
async def test_socket_is_refused_to_who_may_not_read_the_tenant(
    who: str, member: Any, make_user: Any, collection: Any
) -> None:
    path = "/ws/console/acme/"
    cookie = None
    if who == "outsider":
        outsider = await database_sync_to_async(make_user)("otto")
        cookie = await database_sync_to_async(session_cookie)(outsider)
    if who == "missing-collection":
        admin = await database_sync_to_async(member)("ada", "admin")
        cookie = await database_sync_to_async(session_cookie)(admin)
        path = "/ws/console/acme/nope/"
    ws = communicator(path, cookie)
    connected, code = await ws.connect(timeout=10)
    assert not connected
    assert code == 4403


async def test_frames_from_the_page_never_break_the_socket(member: Any, collection: Any) -> None:
    """Text that is not JSON and binary frames just ask for a push; a message over the frame
    limit (as daphne reports it, core/daphne_websocket.py) closes 1009."""
    from core.daphne_websocket import OVERSIZED

    reader = await database_sync_to_async(member)("rita", "reader")
    cookie = await database_sync_to_async(session_cookie)(reader)
    ws = communicator("/ws/console/acme/", cookie)
    connected, _ = await ws.connect(timeout=10)
    assert connected
    await ws.receive_json_from(timeout=20)
    await ws.send_to(text_data="not json {")
    await ws.send_to(bytes_data=b"\x00\x01")
    assert "live" in await ws.receive_json_from(timeout=20)
    await ws.send_input({"type": "websocket.receive", "bytes": b"", OVERSIZED: 5_000_000})
    while True:
        output = await ws.receive_output(timeout=20)
        if output["type"] == "websocket.close":
            break
    assert output["code"] == 1009
