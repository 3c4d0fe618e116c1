"""Fixtures of the in-process sync conversations (tests/support/sync_conversation.py): the
users and tokens of a tenant (`world`) and an opener of wire replicas (`open_replica`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from tests.support.sync_conversation import APP, Opener
from tests.support.wire_replica import CommunicatorTransport, WireReplica


@pytest.fixture
def fresh_channel_layer() -> None:
    """The in-memory layer binds queues to an event loop: give each test its own."""
    from channels.layers import channel_layers

    channel_layers.backends = {}


@pytest.fixture
def fast_passwords(settings: Any) -> None:
    """Users here log in with tokens: hashing their passwords slowly only slows the tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(tenant: Any, collection: Any, member: Any, issue_token: Any) -> dict[str, Any]:
    writer = member("wendy", "writer")
    reader = member("rita", "reader")
    return {
        "tenant": tenant,
        "collection": collection,
        "writer": writer,
        "reader": reader,
        "token": issue_token(writer, "read write"),
        "token_b": issue_token(writer, "read write"),
        "reader_token": issue_token(reader, "read write"),
        "read_scope_token": issue_token(writer, "read"),
    }


@pytest.fixture
async def open_replica(world: dict[str, Any]) -> AsyncIterator[Opener]:
    opened: list[WebsocketCommunicator] = []

    async def open_(
        token: str | None = None,
        *,
        path: str = "/ws/datagate/acme/notes/",
        collection: str = "notes",
        capabilities: list[str] | None = None,
        timeout: float = 10.0,
    ) -> WireReplica:
        communicator = WebsocketCommunicator(APP, path)
        connected, _ = await communicator.connect(timeout=timeout)
        assert connected
        opened.append(communicator)
        return WireReplica(
            transport=CommunicatorTransport(communicator),
            token=token or world["token"],
            tenant="acme",
            collection=collection,
            capabilities=["live"] if capabilities is None else capabilities,
            timeout=timeout,
        )

    yield open_
    for communicator in opened:
        await communicator.disconnect()
