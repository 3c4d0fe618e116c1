"""The console (admin) side of access: guardian's object permissions page on collections, key
rules with CSRF enforced, and the websocket Origin check."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from accounts.models import KeyRule
from accounts.websocket_origins import WebsocketOriginCheck

ORIGINS = "https://app.example.com,.example.org"


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def root(make_user: Any) -> Any:
    return make_user("root", is_superuser=True, is_staff=True)


@pytest.mark.django_db
def test_collections_have_an_object_permissions_page(
    client: Client, root: Any, collection: Any
) -> None:
    client.force_login(root)
    response = client.get(f"/admin/replication/collection/{collection.pk}/permissions/")
    assert response.status_code == 200
    assert b"Object permissions" in response.content


@pytest.mark.django_db
def test_key_rules_are_managed_in_the_admin_with_csrf_enforced(root: Any, tenant: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(root)
    form = {
        "tenant": tenant.pk,
        "collection_name": "notes",
        "position": 10,
        "pattern": "public/*",
        "effect": "allow",
        "for_read": "on",
    }
    refused = client.post("/admin/accounts/keyrule/add/", form)
    assert refused.status_code == 403
    assert not KeyRule.objects.exists()
    page = client.get("/admin/accounts/keyrule/add/")
    assert page.status_code == 200
    token = page.context["csrf_token"]
    created = client.post("/admin/accounts/keyrule/add/", {**form, "csrfmiddlewaretoken": token})
    assert created.status_code == 302, created.content[:2000]
    rule = KeyRule.objects.get()
    assert rule.actions == ["read"]
    assert rule.subject == "everyone"


async def accept(scope: Any, receive: Any, send: Any) -> None:
    """A bare websocket app that accepts: what is refused, the origin check refused."""
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def opens(origin: bytes | None, host: bytes | None = b"sync.example.com") -> bool:
    headers = [(b"origin", origin)] if origin is not None else []
    if host is not None:
        headers.append((b"host", host))
    communicator = WebsocketCommunicator(WebsocketOriginCheck(accept), "/ws/x/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return bool(connected)


# Channels' denier is a consumer, which closes old database connections: allow the database.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (b"https://app.example.com", True),
        (b"https://sub.example.org", True),
        (b"https://evil.example.net", False),
        (b"http://app.example.com.evil.net", False),
        (None, True),  # native replicas send no Origin; their token decides
    ],
)
async def test_websocket_origins_are_checked(
    settings: Any, origin: bytes | None, allowed: bool
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "ALLOWED_ORIGINS": ORIGINS}
    assert await opens(origin) is allowed


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (b"https://sync.example.com", b"sync.example.com", True),
        (b"http://sync.example.com", b"sync.example.com", True),
        (b"https://SYNC.example.com:443", b"sync.example.com", True),
        (b"http://127.0.0.1:8000", b"127.0.0.1:8000", True),
        (b"http://[::1]:8000", b"[::1]:8000", True),
        (b"http://127.0.0.1:9000", b"127.0.0.1:8000", False),  # another port, another origin
        (b"https://other.example.com", b"sync.example.com", False),
        (b"https://sync.example.com.evil.net", b"sync.example.com", False),
        (b"null", b"sync.example.com", False),  # a sandboxed page or a file
        (b"https://sync.example.com", None, False),  # no Host: nothing to be the same as
        (None, b"sync.example.com", True),  # no Origin: not a browser
    ],
)
async def test_by_default_browsers_connect_only_from_the_servers_own_origin(
    settings: Any, origin: bytes | None, host: bytes | None, allowed: bool
) -> None:
    """With DATAGATE_ALLOWED_ORIGINS unset, whatever DJANGO_ALLOWED_HOSTS says (default `*`)."""
    settings.DATAGATE = {**settings.DATAGATE, "ALLOWED_ORIGINS": ""}
    settings.ALLOWED_HOSTS = ["*"]
    assert await opens(origin, host) is allowed
