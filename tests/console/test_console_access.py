"""The console honours key rules on every document page and action (docs/access.md, "One
door"): with `allow user-{username}/*` then `deny user-*`, writer alice sees and changes her
own documents and the shared ones, and another user's documents do not exist for her.

Decided, as in the HTTP API: the pages of a document the user may not read (its page with its
history, its edit form) answer 404, stored or not; a change the user may not make (create,
edit, delete) answers 403, stored or not (the form shows why).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse

from accounts.access import System
from accounts.models import KeyRule
from replication.models import Document, ErrorEvent, Tombstone
from replication.services.documents import document_delete, document_put

pytestmark = pytest.mark.django_db

SEED = System("test seed")
KW = {"tenant": "acme", "collection": "notes"}


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def rule(tenant: Any, position: int, pattern: str, effect: str, *actions: str) -> None:
    KeyRule.objects.create(
        tenant=tenant,
        collection_name="notes",
        position=position,
        pattern=pattern,
        effect=effect,
        **{f"for_{a}": True for a in actions},
    )


@pytest.fixture
def world(tenant: Any, collection: Any, member: Any, client: Client) -> dict[str, Any]:
    every = ("read", "write", "delete")
    rule(tenant, 10, "user-{username}/*", "allow", *every)
    rule(tenant, 20, "user-*", "deny", *every)
    rule(tenant, 30, "shared/*", "deny", "write", "delete")  # readable, not writable
    for doc_id, body in [
        ("user-alice/todo", {"owner": "alice", "word": "apple"}),
        ("user-bob/diary", {"owner": "bob", "word": "secret"}),
        ("user-bob/gone", {"owner": "bob"}),
        ("shared/rules", {"owner": "team", "word": "shared"}),
    ]:
        document_put(actor=SEED, collection_id=collection.pk, doc_id=doc_id, body=body, origin="s")
    document_delete(actor=SEED, collection_id=collection.pk, doc_id="user-bob/gone", origin="s")
    alice = member("alice", "writer")
    member("bob", "writer")
    client.force_login(alice)
    return {"collection": collection, "client": client, "alice": alice}


def url(view: str, doc_id: str | None = None, **query: str) -> str:
    base = reverse(f"console:{view}", kwargs=KW)
    if doc_id is not None:
        query = {"id": doc_id, **query}
    return f"{base}?{urlencode(query)}" if query else base


def listed(client: Client, **query: str) -> set[str]:
    response = client.get(url("documents", **query))
    assert response.status_code == 200
    return set(re.findall(r'data-doc="([^"]*)"', response.content.decode()))


def stored() -> dict[str, int]:
    return dict(Document.objects.values_list("doc_id", "revision"))


def test_lists_and_searches_show_only_readable_documents(world: dict[str, Any]) -> None:
    client = world["client"]
    assert listed(client) == {"user-alice/todo", "shared/rules"}
    assert listed(client, id="bob") == set()
    assert listed(client, id="user-") == {"user-alice/todo"}
    assert listed(client, field="owner", value="bob") == set()
    assert listed(client, field="word", value="secret") == set()
    assert listed(client, field="word", value="apple") == {"user-alice/todo"}
    page = client.get(url("documents")).content.decode()
    assert "secret" not in page
    assert "user-bob" not in page
    assert 'id="new-document"' in page


def test_another_users_document_has_no_page_and_cannot_be_changed(
    world: dict[str, Any],
) -> None:
    client = world["client"]
    before = stored()
    for doc_id in ("user-bob/diary", "user-bob/gone", "user-bob/never-was"):
        assert client.get(url("document", doc_id)).status_code == 404, doc_id
        assert client.get(url("document_edit", doc_id)).status_code == 404, doc_id
        edit = client.post(url("document_edit", doc_id), {"body": '{"owner": "alice"}'})
        assert edit.status_code == 404, doc_id
        removed = client.post(url("document_delete"), {"id": doc_id})
        assert removed.status_code == 403, doc_id
    assert stored() == before
    assert set(Tombstone.objects.values_list("doc_id", flat=True)) == {"user-bob/gone"}


def test_creating_a_document_in_another_users_keys_is_refused(world: dict[str, Any]) -> None:
    client = world["client"]
    before = stored()
    for doc_id in ("user-bob/planted", "user-bob/diary", "shared/new"):
        response = client.post(
            url("document_new"), {"doc_id": doc_id, "body": "{}", "expected_revision": "0"}
        )
        assert response.status_code == 403, doc_id
        assert "key rule denies writing" in response.content.decode()
    assert stored() == before
    # The refusal is recorded like any other; it names no stored revision.
    assert ErrorEvent.objects.filter(code="DG-3003").count() == 3


def test_a_readable_document_the_user_may_not_change(world: dict[str, Any]) -> None:
    client = world["client"]
    page = client.get(url("document", "shared/rules"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "shared" in body
    assert 'id="edit-document"' not in body
    assert 'id="delete-document"' not in body
    assert client.get(url("document_edit", "shared/rules")).status_code == 403
    edit = client.post(url("document_edit", "shared/rules"), {"body": "{}"})
    assert edit.status_code == 403
    removed = client.post(url("document_delete"), {"id": "shared/rules"})
    assert removed.status_code == 403
    assert stored()["shared/rules"] == 1


def test_the_users_own_documents_work_as_before(world: dict[str, Any]) -> None:
    client = world["client"]
    page = client.get(url("document", "user-alice/todo"))
    assert page.status_code == 200
    assert 'id="edit-document"' in page.content.decode()
    assert 'id="delete-document"' in page.content.decode()
    assert "apple" in page.content.decode()
    assert 'id="history"' in page.content.decode()
    created = client.post(
        url("document_new"),
        {"doc_id": "user-alice/new", "body": '{"n": 1}', "expected_revision": 0},
    )
    assert created.status_code == 302
    edited = client.post(
        url("document_edit", "user-alice/todo"), {"body": '{"n": 2}', "expected_revision": 1}
    )
    assert edited.status_code == 302
    assert stored()["user-alice/todo"] == 2
    removed = client.post(url("document_delete"), {"id": "user-alice/new"})
    assert removed.status_code == 302
    assert "user-alice/new" not in stored()


def test_admins_and_readers(world: dict[str, Any], member: Any) -> None:
    client = world["client"]
    client.force_login(member("ada", "admin"))  # tenant admins are not subject to key rules
    assert listed(client) == {"user-alice/todo", "user-bob/diary", "shared/rules"}
    assert client.get(url("document", "user-bob/diary")).status_code == 200
    client.force_login(member("rita", "reader"))
    assert listed(client) == {"shared/rules"}
    assert client.get(url("document_new")).status_code == 403
    assert client.post(url("document_delete"), {"id": "shared/rules"}).status_code == 403


def test_the_http_api_gives_the_same_answers_for_the_same_rules(
    world: dict[str, Any], issue_token: Any
) -> None:
    """One door: with alice's token the API shows and refuses exactly what the console does."""
    from rest_framework.test import APIClient

    from search.services import search_index_configure

    search_index_configure(collection_id=world["collection"].pk, fields=["word", "owner"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(world['alice'], 'read write')}")
    base = "/api/v1/tenants/acme/collections/notes"
    listed_ids = {d["_id"] for d in api.get(f"{base}/documents/").json()["documents"]}
    assert listed_ids == {"user-alice/todo", "shared/rules"}
    changes = api.get(f"{base}/changes/").json()["feed"]
    assert {d["_id"] for d in changes["changeSet"]} == {"user-alice/todo", "shared/rules"}
    assert "user-bob/gone" not in changes["tombstoneMap"]
    found = api.get(f"{base}/search/", {"q": "secret"}).json()["results"]
    assert found == []
    assert [r["_id"] for r in api.get(f"{base}/search/", {"q": "apple"}).json()["results"]] == [
        "user-alice/todo"
    ]
    for doc_id in ("user-bob/diary", "user-bob/never-was"):
        assert api.get(f"{base}/documents/{doc_id}").status_code == 404
    before = stored()
    planted = api.put(f"{base}/documents/user-bob/planted", {"x": 1}, format="json")
    assert (planted.status_code, planted.json()["error"]["code"]) == (403, "DG-3003")
    removed = api.delete(f"{base}/documents/user-bob/diary")
    assert (removed.status_code, removed.json()["error"]["code"]) == (403, "DG-3004")
    shared = api.put(f"{base}/documents/shared/rules", {"x": 1}, format="json")
    assert (shared.status_code, shared.json()["error"]["code"]) == (403, "DG-3003")
    assert stored() == before
