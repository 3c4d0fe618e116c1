"""The console's topics page (issue 6's topics) and maintenance page (issue 7's runs)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.access import System
from accounts.services import membership_set, tenant_get_or_create
from core.errors import DataGateError, ErrorCode
from replication.models import MaintenanceRun, Tombstone
from replication.services.documents import document_delete, document_put
from replication.services.events import error_event_record
from topics.services import Publication, messages_publish, offset_commit, topic_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def publish(topic: Any, count: int, start: int = 0) -> None:
    messages_publish(
        topic_id=topic.pk,
        messages=[Publication(message_id=f"m{start + i}", payload={"i": i}) for i in range(count)],
        publisher_id=None,
    )


def commit(topic: Any, user: Any, device: str, offset: int) -> None:
    offset_commit(
        topic_id=topic.pk, topic_name=topic.name, user_id=user.pk, device=device, offset=offset
    )


@pytest.fixture
def topics_world(tenant: Any, member: Any) -> dict[str, Any]:
    admin = member("ada", "admin")
    reader = member("rita", "reader")
    chat = topic_create(tenant=tenant, name="chat", scope="global", owner_id=admin.pk)
    mine = topic_create(tenant=tenant, name="inbox", scope="local", owner_id=reader.pk)
    theirs = topic_create(tenant=tenant, name="secret", scope="local", owner_id=admin.pk)
    publish(chat, 10)
    publish(mine, 3)
    commit(chat, reader, "phone", 4)
    commit(chat, reader, "laptop", 10)
    commit(chat, admin, "phone", 7)
    return {"admin": admin, "reader": reader, "chat": chat, "mine": mine, "theirs": theirs}


def test_topics_show_message_counts_and_largest_lag_to_a_reader(
    client: Client, topics_world: dict[str, Any]
) -> None:
    client.force_login(topics_world["reader"])
    html = client.get(reverse("console:topics", kwargs={"tenant": "acme"})).content.decode()
    names = re.findall(r'<tr data-topic="([^"]+)">', html)
    assert names == ["chat", "inbox"]  # another user's local topic does not exist for her
    chat = re.search(r'<tr data-topic="chat">(.*?)</tr>', html, re.S)
    assert chat is not None
    assert 'data-stat="messages">10<' in chat.group(1)
    assert 'data-stat="max-lag">6<' in chat.group(1)


def test_topic_page_lists_each_consumer_with_its_lag(
    client: Client, topics_world: dict[str, Any]
) -> None:
    client.force_login(topics_world["reader"])
    url = reverse("console:topic", kwargs={"tenant": "acme", "pk": topics_world["chat"].pk})
    html = client.get(url).content.decode()
    consumers = re.findall(
        r"<tr><td>(\w+)</td><td>(\w+)</td><td class=\"num\">(\d+)</td>\s*"
        r"<td class=\"num lag[^\"]*\">(\d+)</td>",
        html,
    )
    assert consumers == [
        ("rita", "phone", "4", "6"),
        ("ada", "phone", "7", "3"),
        ("rita", "laptop", "10", "0"),
    ]


def test_another_users_local_topic_and_other_tenants_topics_are_404(
    client: Client, topics_world: dict[str, Any], make_user: Any
) -> None:
    client.force_login(topics_world["reader"])
    url = reverse("console:topic", kwargs={"tenant": "acme", "pk": topics_world["theirs"].pk})
    assert client.get(url).status_code == 404
    outsider = make_user("otto")
    membership_set(user=outsider, tenant=tenant_get_or_create(slug="other"), role="admin")
    client.force_login(outsider)
    assert client.get(reverse("console:topics", kwargs={"tenant": "acme"})).status_code == 404
    chat = reverse("console:topic", kwargs={"tenant": "acme", "pk": topics_world["chat"].pk})
    assert client.get(chat).status_code == 404


def test_topics_page_queries_do_not_grow_with_topics_and_consumers(
    client: Client,
    tenant: Any,
    member: Any,
    django_assert_max_num_queries: Any,
) -> None:
    admin = member("ada", "admin")
    for t in range(40):
        topic = topic_create(tenant=tenant, name=f"t{t}", scope="global", owner_id=None)
        publish(topic, 2)
        for d in range(5):
            commit(topic, admin, f"dev{d}", 1)
    client.force_login(admin)
    with django_assert_max_num_queries(10):
        response = client.get(reverse("console:topics", kwargs={"tenant": "acme"}))
    assert response.content.decode().count("<tr data-topic=") == 40
    with django_assert_max_num_queries(12):
        client.get(reverse("console:topic", kwargs={"tenant": "acme", "pk": topic.pk}))


# --- maintenance --------------------------------------------------------------------------


def test_maintenance_is_for_superusers_only(client: Client, member: Any) -> None:
    client.force_login(member("ada", "admin"))
    assert client.get(reverse("console:maintenance")).status_code == 404
    assert client.post(reverse("console:maintenance_run"), {"job": "gc"}).status_code == 404
    assert not MaintenanceRun.objects.exists()


def test_superuser_runs_gc_and_pruning_from_the_console(
    client: Client, make_user: Any, collection: Any
) -> None:
    collection.tombstone_ttl_days = 0
    collection.save(update_fields=["tombstone_ttl_days"])
    document_put(
        actor=System("test"), collection_id=collection.pk, doc_id="gone", body={}, origin="seed"
    )
    document_delete(actor=System("test"), collection_id=collection.pk, doc_id="gone", origin="seed")
    boss = make_user("boss", is_superuser=True, is_staff=True)
    client.force_login(boss)
    page = client.get(reverse("console:maintenance")).content.decode()
    assert page.count("Never run.") == 2
    assert 'id="run-gc"' in page

    response = client.post(reverse("console:maintenance_run"), {"job": "gc"}, follow=True)
    assert response.status_code == 200
    assert not Tombstone.objects.filter(collection=collection).exists()
    run = MaintenanceRun.objects.get(job="gc")
    assert (run.trigger, run.ok) == ("console", True)
    assert "collected 1 tombstone" in response.content.decode()

    client.post(reverse("console:maintenance_run"), {"job": "journal_prune"})
    assert MaintenanceRun.objects.filter(job="journal_prune", trigger="console").exists()
    page = client.get(reverse("console:maintenance")).content.decode()
    assert "Never run." not in page

    refused = client.post(reverse("console:maintenance_run"), {"job": "rm -rf"}, follow=True)
    assert "Unknown job" in refused.content.decode()
    assert MaintenanceRun.objects.count() == 2


def test_maintenance_page_lists_errors_that_belong_to_no_tenant(
    client: Client, make_user: Any
) -> None:
    error = DataGateError(ErrorCode.MAINTENANCE_FAILED, job="gc", detail="disk full")
    error_event_record(error=error)
    client.force_login(make_user("boss", is_superuser=True))
    html = client.get(reverse("console:maintenance")).content.decode()
    assert "disk full" in html
    assert 'href="/console/errors/codes/#dg-7002"' in html
