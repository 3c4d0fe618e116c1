"""The console's pages: who may see and do what, what the pages show, and their cost."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.access import System
from accounts.services import access_token_issue, membership_set, tenant_get_or_create
from accounts.tokens import TokenRejected, token_authenticate
from core.errors import ErrorCode
from replication.doorbell import REPLICA_CONTROL_GROUP, REPLICA_DISCONNECT
from replication.models import (
    Document,
    ErrorEvent,
    JournalEntry,
    Replica,
    ReplicaSession,
    Tombstone,
)
from replication.services.documents import document_put
from replication.services.replicas import feed_latency_record, replica_acked, replica_disconnected
from tests.support.console_builders import connect_replica, make_replicas, record_error

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """These tests log in with force_login; a slow password hash only costs time here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


@pytest.fixture
def admin(member: Any) -> Any:
    return member("ada", "admin")


@pytest.fixture
def reader(member: Any) -> Any:
    return member("rita", "reader")


@pytest.fixture
def writer(member: Any) -> Any:
    return member("walt", "writer")


@pytest.fixture
def outsider(make_user: Any) -> Any:
    """The admin of another tenant, with no role in `acme`."""
    user = make_user("otto")
    membership_set(user=user, tenant=tenant_get_or_create(slug="other"), role="admin")
    return user


@pytest.fixture
def world(collection: Any, admin: Any) -> dict[str, Any]:
    """A collection with a document, a replica with a session, and an error."""
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="n1",
        body={"title": "hi"},
        origin="seed",
    )
    replica = connect_replica(collection=collection, user=admin)
    record_error(collection=collection, user=admin, replica=replica, code=ErrorCode.NOT_JSON)
    return {"collection": collection, "replica": replica}


def page_urls(world: dict[str, Any]) -> list[str]:
    c = world["collection"]
    t = c.tenant.slug
    doc = f"?{urlencode({'id': 'n1'})}"
    return [
        reverse("console:dashboard", kwargs={"tenant": t}),
        reverse("console:collection", kwargs={"tenant": t, "collection": c.name}),
        reverse("console:replicas", kwargs={"tenant": t}),
        reverse("console:replica", kwargs={"tenant": t, "pk": world["replica"].pk}),
        reverse("console:documents", kwargs={"tenant": t, "collection": c.name}),
        reverse("console:document", kwargs={"tenant": t, "collection": c.name}) + doc,
        reverse("console:errors", kwargs={"tenant": t}),
        reverse("console:topics", kwargs={"tenant": t}),
        reverse("console:collections", kwargs={"tenant": t}),
        reverse("console:collection_settings", kwargs={"tenant": t, "collection": c.name}),
    ]


def action_posts(world: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    c = world["collection"]
    t = c.tenant.slug
    pk = world["replica"].pk
    kw = {"tenant": t, "collection": c.name}
    return [
        (reverse("console:replica_disconnect", kwargs={"tenant": t, "pk": pk}), {}),
        (reverse("console:replica_revoke", kwargs={"tenant": t, "pk": pk}), {}),
        (reverse("console:document_new", kwargs=kw), {"doc_id": "x", "body": "{}"}),
        (reverse("console:document_edit", kwargs=kw) + "?id=n1", {"body": "{}"}),
        (reverse("console:document_delete", kwargs=kw), {"id": "n1"}),
        (reverse("console:collections", kwargs={"tenant": t}), {"name": "new"}),
        (
            reverse("console:collection_settings", kwargs=kw),
            {"action": "delete", "confirm": c.name},
        ),
        (reverse("console:members", kwargs={"tenant": t}), {"action": "add", "username": "x"}),
    ]


# --- who may see and do what --------------------------------------------------------------


def test_root_redirects_to_the_console(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == reverse("console:index")


def test_anonymous_is_sent_to_login_from_every_page_and_action(
    client: Client, world: dict[str, Any]
) -> None:
    login_url = reverse("console:login")
    for url in [reverse("console:index"), reverse("console:error_codes"), *page_urls(world)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(login_url), url
    for url, data in action_posts(world):
        response = client.post(url, data)
        assert response.status_code == 302, url
        assert response["Location"].startswith(login_url), url
    assert Document.objects.filter(doc_id="n1").exists()


def test_login_form_needs_its_csrf_token_and_logs_in(admin: Any, world: dict[str, Any]) -> None:
    client = Client(enforce_csrf_checks=True)
    login_url = reverse("console:login")
    refused = client.post(login_url, {"username": "ada", "password": "pw-ada"})
    assert refused.status_code == 403
    page = client.get(login_url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None
    response = client.post(
        login_url,
        {"username": "ada", "password": "pw-ada", "csrfmiddlewaretoken": token.group(1)},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("console:index")
    # One tenant: the console goes straight to its dashboard.
    home = client.get(reverse("console:index"))
    assert home["Location"] == reverse("console:dashboard", kwargs={"tenant": "acme"})


def test_wrong_password_shows_an_error_and_no_session(client: Client, admin: Any) -> None:
    response = client.post(reverse("console:login"), {"username": "ada", "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert client.get(reverse("console:index")).status_code == 302


def test_actions_refuse_a_post_without_csrf_token(admin: Any, world: dict[str, Any]) -> None:
    client = login(Client(enforce_csrf_checks=True), admin)
    for url, data in action_posts(world):
        assert client.post(url, data).status_code == 403, url
    assert Document.objects.filter(doc_id="n1").exists()


def test_reader_sees_every_page_without_action_buttons(
    client: Client, reader: Any, world: dict[str, Any]
) -> None:
    login(client, reader)
    for url in page_urls(world):
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for button in ("Disconnect", "Revoke token", "New document", "Edit", "Delete"):
            assert f">{button}<" not in html, (url, button)
        assert "read-only" in html


def test_reader_is_refused_every_action_with_403(
    client: Client, reader: Any, world: dict[str, Any]
) -> None:
    login(client, reader)
    for url, data in action_posts(world):
        assert client.post(url, data).status_code == 403, url
    kw = {"tenant": "acme", "collection": "notes"}
    assert client.get(reverse("console:document_new", kwargs=kw)).status_code == 403
    assert client.get(reverse("console:document_edit", kwargs=kw) + "?id=n1").status_code == 403
    assert Document.objects.get(doc_id="n1").body == {"title": "hi"}
    assert not Tombstone.objects.exists()


def test_admin_of_another_tenant_sees_nothing_of_this_one(
    client: Client, outsider: Any, world: dict[str, Any]
) -> None:
    login(client, outsider)
    for url in page_urls(world):
        assert client.get(url).status_code == 404, url
    for url, data in action_posts(world):
        assert client.post(url, data).status_code == 404, url
    home = client.get(reverse("console:index"))
    assert home["Location"] == reverse("console:dashboard", kwargs={"tenant": "other"})
    other = client.get(home["Location"]).content.decode()
    assert "acme" not in other
    assert Document.objects.filter(doc_id="n1").exists()


def test_user_without_any_role_is_told_so(client: Client, make_user: Any) -> None:
    login(client, make_user("nobody"))
    response = client.get(reverse("console:index"))
    assert response.status_code == 200
    assert b"no role in any tenant" in response.content


def test_superuser_sees_every_tenant(client: Client, make_user: Any, world: Any) -> None:
    tenant_get_or_create(slug="other")
    boss = make_user("boss", is_superuser=True, is_staff=True)
    html = login(client, boss).get(reverse("console:index")).content.decode()
    assert "acme" in html
    assert "other" in html


# --- dashboard ----------------------------------------------------------------------------


def test_dashboard_shows_counts_charts_online_replicas_and_errors(
    client: Client, admin: Any, world: dict[str, Any]
) -> None:
    collection = world["collection"]
    document_put(
        actor=System("test"), collection_id=collection.pk, doc_id="n2", body={}, origin="seed"
    )
    from replication.services.documents import document_delete

    document_delete(actor=System("test"), collection_id=collection.pk, doc_id="n2", origin="seed")
    replica_acked(replica_pk=world["replica"].pk, seq=1, latency_ms=40)
    replica_acked(replica_pk=world["replica"].pk, seq=2, latency_ms=80)
    login(client, admin)
    html = client.get(reverse("console:dashboard", kwargs={"tenant": "acme"})).content.decode()
    row = re.search(r'<tr data-collection="notes">(.*?)</tr>', html, re.S)
    assert row is not None
    stats = dict(re.findall(r'data-stat="(\w+)">([^<]*)<', row.group(1)))
    assert stats == {
        "documents": "1",
        "tombstones": "1",
        "journal": "3",
        "seq": "3",
        "purge": "0",
        "online": "1",
    }
    assert html.count("<svg") == 2
    assert "3 in the hour" in html
    assert "60 ms average, 80 ms max (2 acks)" in html
    assert 'data-replica="phone-1"' in html
    assert "data-lag>1<" in html
    assert "DG-2001" in html
    assert 'data-live-url="/ws/console/acme/"' in html


def test_collection_dashboard_of_a_missing_collection_is_404(
    client: Client, admin: Any, world: Any
) -> None:
    login(client, admin)
    url = reverse("console:collection", kwargs={"tenant": "acme", "collection": "nope"})
    assert client.get(url).status_code == 404


# --- replicas -----------------------------------------------------------------------------


def test_replica_list_filters_and_sorts(
    client: Client, admin: Any, reader: Any, collection: Any
) -> None:
    make_replicas(collection=collection, user=admin, count=5)
    connect_replica(collection=collection, user=reader, replica_id="tablet")
    replica_disconnected(replica_pk=collection.replicas.get(replica_id="tablet").pk)
    document_put(
        actor=System("test"), collection_id=collection.pk, doc_id="a", body={}, origin="seed"
    )
    login(client, admin)
    url = reverse("console:replicas", kwargs={"tenant": "acme"})

    def ids(query: dict[str, str]) -> list[str]:
        html = client.get(url, query).content.decode()
        return re.findall(r'<tr data-replica="([^"]+)"', html)

    assert ids({"sort": "replica"})[:3] == ["device-00000", "device-00001", "device-00002"]
    assert ids({"sort": "-replica"})[0] == "tablet"
    assert ids({"user": "rita"}) == ["tablet"]
    assert ids({"online": "no"}) == ["tablet"]
    assert ids({"q": "00003"}) == ["device-00003"]
    # Seq is 1: replicas that acked 0 are behind by one, those that acked 1 are not.
    assert ids({"behind": "on", "sort": "replica", "online": "yes"}) == [
        "device-00000",
        "device-00002",
        "device-00004",
    ]
    assert ids({"sort": "-pushed"})[0] == "device-00004"
    assert ids({"sort": "nonsense"})  # an unknown sort falls back to last seen


def test_replica_page_shows_sessions_and_errors(
    client: Client, admin: Any, world: dict[str, Any]
) -> None:
    replica = world["replica"]
    replica_disconnected(replica_pk=replica.pk)
    connect_replica(collection=world["collection"], user=admin)
    sessions = list(ReplicaSession.objects.filter(replica=replica).order_by("started_at"))
    assert len(sessions) == 2
    assert sessions[0].ended_at is not None
    assert sessions[1].ended_at is None
    login(client, admin)
    url = reverse("console:replica", kwargs={"tenant": "acme", "pk": replica.pk})
    html = client.get(url).content.decode()
    assert html.count('<span class="badge online">open</span>') == 1
    assert "DG-2001" in html
    assert ">Disconnect<" in html
    assert "<dt>Last verified equal</dt><dd>never" in html
    Replica.objects.filter(pk=replica.pk).update(
        verified_at=datetime(2026, 12, 5, 8, 30, tzinfo=UTC)
    )
    html = client.get(url).content.decode()
    assert "<dt>Last verified equal</dt><dd>2026-12-05 08:30:00</dd>" in html


def test_disconnect_sends_the_replica_group_a_disconnect_message(
    client: Client, admin: Any, world: dict[str, Any]
) -> None:
    replica = world["replica"]
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(REPLICA_CONTROL_GROUP, channel)
    login(client, admin)
    url = reverse("console:replica_disconnect", kwargs={"tenant": "acme", "pk": replica.pk})
    response = client.post(url)
    assert response.status_code == 302
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == REPLICA_DISCONNECT
    assert message["replica"] == replica.pk


def test_revoke_removes_that_users_tokens_only(
    client: Client, admin: Any, reader: Any, world: dict[str, Any]
) -> None:
    replica = world["replica"]
    mine = access_token_issue(user=admin, scopes=["read"])
    theirs = access_token_issue(user=reader, scopes=["read"])
    login(client, admin)
    url = reverse("console:replica_revoke", kwargs={"tenant": "acme", "pk": replica.pk})
    assert client.post(url, {"application": ""}).status_code == 302
    with pytest.raises(TokenRejected):
        token_authenticate(mine)
    assert token_authenticate(theirs).user == reader


def test_writer_may_edit_documents_but_not_act_on_replicas(
    client: Client, writer: Any, world: dict[str, Any]
) -> None:
    login(client, writer)
    posts = action_posts(world)
    assert client.post(*posts[0]).status_code == 403
    assert client.post(*posts[1]).status_code == 403
    assert client.post(*posts[2]).status_code == 302
    assert Document.objects.filter(doc_id="x").exists()


# --- documents ----------------------------------------------------------------------------


def test_console_writes_go_through_the_journal(
    client: Client, admin: Any, world: dict[str, Any]
) -> None:
    collection = world["collection"]
    kw = {"tenant": "acme", "collection": "notes"}
    login(client, admin)
    created = client.post(
        reverse("console:document_new", kwargs=kw),
        {"doc_id": "n/2?#", "body": '{"title": "made here", "n": 2}', "expected_revision": "0"},
    )
    assert created.status_code == 302
    doc = Document.objects.get(collection=collection, doc_id="n/2?#")
    assert doc.body == {"title": "made here", "n": 2}
    assert doc.origin == "console:ada"
    detail = client.get(created["Location"])
    assert detail.status_code == 200
    assert "made here" in detail.content.decode()

    edit_url = reverse("console:document_edit", kwargs=kw) + "?" + urlencode({"id": "n/2?#"})
    form = client.get(edit_url).content.decode()
    assert 'name="expected_revision" value="1"' in form
    assert (
        client.post(edit_url, {"body": '{"title": "v2"}', "expected_revision": "1"}).status_code
        == 302
    )
    stale = client.post(edit_url, {"body": '{"title": "v3"}', "expected_revision": "1"})
    assert stale.status_code == 200
    assert "DG-4009" in stale.content.decode()
    assert ErrorEvent.objects.filter(code="DG-4009", tenant="acme").exists()

    deleted = client.post(
        reverse("console:document_delete", kwargs=kw), {"id": "n/2?#", "expected_revision": "2"}
    )
    assert deleted.status_code == 302
    assert Tombstone.objects.filter(collection=collection, doc_id="n/2?#").exists()
    journal = list(
        JournalEntry.objects.filter(collection=collection, doc_id="n/2?#").order_by("seq")
    )
    assert [(j.operation, j.user_id) for j in journal] == [
        ("put", admin.pk),
        ("put", admin.pk),
        ("delete", admin.pk),
    ]
    history = client.get(reverse("console:document", kwargs=kw) + "?" + urlencode({"id": "n/2?#"}))
    assert history.status_code == 200
    assert history.content.decode().count("<td>put</td>") == 2
    assert "deleted" in history.content.decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "Not valid JSON"),
        ("[1, 2]", "one JSON object"),
        ('{"_secret": 1}', "reserved"),
    ],
)
def test_bad_document_bodies_are_refused_with_a_reason(
    client: Client, admin: Any, world: Any, body: str, message: str
) -> None:
    login(client, admin)
    url = reverse("console:document_new", kwargs={"tenant": "acme", "collection": "notes"})
    response = client.post(url, {"doc_id": "bad", "body": body})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Document.objects.filter(doc_id="bad").exists()


def test_too_long_document_id_is_refused(client: Client, admin: Any, world: Any) -> None:
    login(client, admin)
    url = reverse("console:document_new", kwargs={"tenant": "acme", "collection": "notes"})
    response = client.post(url, {"doc_id": "x" * 129, "body": "{}"})
    assert response.status_code == 200
    assert "at most 128 characters" in response.content.decode()


def test_documents_search_by_id_and_by_field(client: Client, reader: Any, collection: Any) -> None:
    for i, status in enumerate(["open", "done", "open"]):
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=f"task-{i}",
            body={"status": status, "n": i, "meta": {"owner": f"u{i}"}},
            origin="seed",
        )
    login(client, reader)
    url = reverse("console:documents", kwargs={"tenant": "acme", "collection": "notes"})

    def ids(query: dict[str, str]) -> list[str]:
        response = client.get(url, query)
        assert response.status_code == 200
        return re.findall(r'<tr data-doc="([^"]+)"', response.content.decode())

    assert ids({}) == ["task-0", "task-1", "task-2"]
    assert ids({"id": "-1"}) == ["task-1"]
    assert ids({"field": "status", "value": "open"}) == ["task-0", "task-2"]
    assert ids({"field": "status", "value": '"done"'}) == ["task-1"]
    assert ids({"field": "n", "value": "2"}) == ["task-2"]
    assert ids({"field": "meta.owner", "value": "u1"}) == ["task-1"]
    bad = client.get(url, {"field": "x__contains", "value": "1"}).content.decode()
    assert "a field is letters" in bad


def test_unknown_document_is_404(client: Client, reader: Any, world: Any) -> None:
    login(client, reader)
    url = reverse("console:document", kwargs={"tenant": "acme", "collection": "notes"})
    assert client.get(url + "?id=nope").status_code == 404


# --- errors -------------------------------------------------------------------------------


def test_error_events_filter_by_code_replica_user_and_time(
    client: Client, admin: Any, reader: Any, collection: Any
) -> None:
    phone = connect_replica(collection=collection, user=admin)
    record_error(collection=collection, user=admin, replica=phone, code=ErrorCode.NOT_JSON)
    record_error(collection=collection, user=reader, code=ErrorCode.READ_ONLY)
    old = record_error(collection=collection, user=reader, code=ErrorCode.MISSING_HEADER)
    ErrorEvent.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    login(client, reader)
    url = reverse("console:errors", kwargs={"tenant": "acme"})

    def codes(query: dict[str, Any]) -> list[str]:
        response = client.get(url, query)
        assert response.status_code == 200
        return re.findall(r'class="code">(DG-\d+)<', response.content.decode())

    assert sorted(codes({})) == ["DG-2001", "DG-2002", "DG-3002"]
    assert codes({"code": "dg-3002"}) == ["DG-3002"]
    assert codes({"replica": phone.pk}) == ["DG-2001"]
    assert sorted(codes({"user": "rita"})) == ["DG-2002", "DG-3002"]
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert sorted(codes({"since": since})) == ["DG-2001", "DG-3002"]
    until = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert codes({"until": until}) == ["DG-2002"]
    assert "Enter a valid" in client.get(url, {"since": "yesterday"}).content.decode()


def test_error_codes_page_has_an_anchor_for_every_code(client: Client, reader: Any) -> None:
    login(client, reader)
    html = client.get(reverse("console:error_codes")).content.decode()
    for member in ErrorCode:
        assert f'id="{member.code.lower()}"' in html, member.code


# --- cost: query counts do not grow with the number of replicas ---------------------------

MANY = 2000


def test_list_pages_use_a_fixed_number_of_queries(
    client: Client,
    admin: Any,
    collection: Any,
    django_assert_max_num_queries: Any,
) -> None:
    make_replicas(collection=collection, user=admin, count=MANY)
    for i in range(60):
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=f"d{i}",
            body={"i": i},
            origin="seed",
        )
    feed_latency_record(collection_id=collection.pk, latency_ms=12)
    login(client, admin)
    t = {"tenant": "acme"}
    kw = {"tenant": "acme", "collection": "notes"}
    replica = collection.replicas.order_by("pk").first()
    # Measured: the same counts with 10 replicas as with 2,000.
    pages = [
        (reverse("console:dashboard", kwargs=t), 13),
        (reverse("console:collection", kwargs=kw), 14),
        (reverse("console:replicas", kwargs=t), 10),
        (reverse("console:replicas", kwargs=t) + "?sort=-lag&behind=on&page=3", 10),
        (reverse("console:replica", kwargs={"tenant": "acme", "pk": replica.pk}), 11),
        (reverse("console:errors", kwargs=t), 10),
        # +4 for the reader's document policy (role, collection grants): the access door.
        (reverse("console:documents", kwargs=kw), 14),
    ]
    for url, limit in pages:
        with django_assert_max_num_queries(limit):
            response = client.get(url)
        assert response.status_code == 200, url


def test_replica_list_page_shows_fifty_of_thousands(
    client: Client, admin: Any, collection: Any
) -> None:
    make_replicas(collection=collection, user=admin, count=MANY)
    login(client, admin)
    html = client.get(reverse("console:replicas", kwargs={"tenant": "acme"})).content.decode()
    assert html.count("<tr data-replica=") == 50
    assert f"{MANY} in all" in html
