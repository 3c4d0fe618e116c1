"""Every link of the console works for an admin, and static files are served with DEBUG off."""

from __future__ import annotations

import re
from collections import deque
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from django.conf import settings
from django.test import Client

from accounts.access import System
from core.errors import ErrorCode
from replication.services.documents import document_put
from replication.services.replicas import replica_acked
from tests.support.console_builders import connect_replica, record_error
from topics.services import Publication, messages_publish, offset_commit, topic_create

pytestmark = pytest.mark.django_db

# Form actions that only take POST; the crawl follows links, not buttons.
POST_ONLY = ("/logout/", "/disconnect/", "/revoke/", "/delete/", "/maintenance/run/")
LINK = re.compile(r'(?:href|src|action)="([^"#][^"]*|#[^"]*)"')


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_crawl_every_console_link_as_admin_finds_no_error(
    client: Client, make_user: Any, collection: Any
) -> None:
    assert settings.DEBUG is False
    # A superuser is the admin of every tenant and also sees the maintenance page.
    admin = make_user("ada", is_superuser=True, is_staff=True)
    chat = topic_create(tenant=collection.tenant, name="chat", scope="global", owner_id=None)
    messages_publish(
        topic_id=chat.pk, messages=[Publication(message_id="m1", payload=1)], publisher_id=None
    )
    offset_commit(topic_id=chat.pk, topic_name="chat", user_id=admin.pk, device="d", offset=1)
    for i in range(3):
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=f"n{i}",
            body={"i": i},
            origin="seed",
        )
    replica = connect_replica(collection=collection, user=admin)
    replica_acked(replica_pk=replica.pk, seq=2, latency_ms=25)
    record_error(collection=collection, user=admin, replica=replica, code=ErrorCode.NOT_JSON)
    client.force_login(admin)

    seen: set[str] = set()
    queue = deque(["/console/"])
    anchors: set[str] = set()
    checked_static = 0
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        response = client.get(url, follow=True)
        assert response.status_code < 400, f"{url} answered {response.status_code}"
        if url.startswith("/static/"):
            checked_static += 1
            continue
        if "text/html" not in response.get("Content-Type", ""):
            continue
        html = response.content.decode()
        for raw in LINK.findall(html):
            target, fragment = urldefrag(urljoin(url, raw.replace("&amp;", "&")))
            parts = urlsplit(target)
            if parts.netloc and parts.netloc != "testserver":
                raise AssertionError(f"{url} links outside the server: {raw}")
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            if fragment and parts.path == "/console/errors/codes/":
                anchors.add(fragment)
            if parts.path.startswith(("/console/", "/static/")) and not any(
                part in parts.path for part in POST_ONLY
            ):
                queue.append(path)
    assert checked_static >= 2  # the stylesheet and the script
    assert len(seen) > 15
    for must in (
        "/console/maintenance/",
        "/console/t/acme/topics/",
        f"/console/t/acme/topics/{chat.pk}/",
    ):
        assert must in seen, must
    codes_page = client.get("/console/errors/codes/").content.decode()
    for anchor in anchors:
        assert f'id="{anchor}"' in codes_page, f"no anchor #{anchor} on the error codes page"


def test_static_files_are_served_without_debug_and_without_collectstatic(client: Client) -> None:
    assert settings.DEBUG is False
    for name, kind in [("console.css", "text/css"), ("console.js", "javascript")]:
        response = client.get(f"/static/console/{name}")
        assert response.status_code == 200
        assert kind in response["Content-Type"]
        body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
        assert len(body) > 500
