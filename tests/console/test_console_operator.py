"""The operator pages without a browser: export and import, delete with confirmation, document
edits in the audit log, and each tenant admin seeing only their own tenant's log."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.access import System
from accounts.models import AuditEntry
from accounts.services import membership_set, tenant_get_or_create
from replication.models import Collection, Document
from replication.services.documents import document_put
from topics.models import Message
from topics.services import topic_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def as_user(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def settings_url(collection: Any) -> str:
    return reverse(
        "console:collection_settings",
        kwargs={"tenant": collection.tenant.slug, "collection": collection.name},
    )


def test_export_then_import_restores_the_collection_and_both_are_audited(
    member: Any, collection: Any
) -> None:
    ada = as_user(member("ada", "admin"))
    document_put(
        actor=System("seed"), collection_id=collection.pk, doc_id="n1", body={"a": 1}, origin="s"
    )
    exported = ada.get(
        reverse("console:collection_export", kwargs={"tenant": "acme", "collection": "notes"})
    )
    assert exported.status_code == 200
    assert exported["Content-Disposition"] == 'attachment; filename="acme-notes.jsonl"'
    Document.objects.all().delete()
    upload = io.BytesIO(exported.content)
    upload.name = "notes.jsonl"
    response = ada.post(settings_url(collection), {"action": "import", "file": upload})
    assert response.status_code == 302
    assert Document.objects.get(doc_id="n1").body == {"a": 1}
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"collection.export", "collection.import"} <= actions


def test_delete_needs_the_name_again(member: Any, collection: Any) -> None:
    ada = as_user(member("ada", "admin"))
    page = ada.post(settings_url(collection), {"action": "delete", "confirm": "wrong"}, follow=True)
    assert "DG-7205" in page.content.decode()
    assert Collection.objects.filter(pk=collection.pk).exists()
    gone = ada.post(settings_url(collection), {"action": "delete", "confirm": "notes"})
    assert gone["Location"] == reverse("console:collections", kwargs={"tenant": "acme"})
    assert not Collection.objects.filter(pk=collection.pk).exists()


def test_a_document_edited_in_the_console_is_in_the_audit_log(member: Any, collection: Any) -> None:
    ada = as_user(member("ada", "admin"))
    url = reverse("console:document_new", kwargs={"tenant": "acme", "collection": "notes"})
    assert ada.post(url, {"doc_id": "d1", "body": '{"x": 1}'}).status_code == 302
    entry = AuditEntry.objects.get(action="document.put")
    assert (entry.actor_name, entry.target) == ("ada", "acme/notes/d1")


def test_each_tenant_admin_sees_only_their_tenants_audit_log(
    member: Any, make_user: Any, collection: Any
) -> None:
    ada = member("ada", "admin")
    otto = make_user("otto")
    other = tenant_get_or_create(slug="other")
    membership_set(user=otto, tenant=other, role="admin")
    as_user(ada).post(
        reverse("console:members", kwargs={"tenant": "acme"}),
        {"action": "add", "username": "bob", "password": "pw-bob-long-1", "role": "reader"},
    )
    acme_log = as_user(ada).get(reverse("console:audit", kwargs={"tenant": "acme"}))
    assert "member.set" in acme_log.content.decode()
    otto_client = as_user(otto)
    assert otto_client.get(reverse("console:audit", kwargs={"tenant": "acme"})).status_code == 404
    own = otto_client.get(reverse("console:audit", kwargs={"tenant": "other"})).content.decode()
    assert "bob" not in own


def test_a_reader_browses_a_topic_but_may_not_publish(
    member: Any, tenant: Any, collection: Any
) -> None:
    rita = as_user(member("rita", "reader"))
    topic = topic_create(tenant=tenant, name="news", scope="global", owner_id=None)
    url = reverse("console:topic_messages", kwargs={"tenant": "acme", "pk": topic.pk})
    page = rita.get(url)
    assert page.status_code == 200
    assert "publish-form" not in page.content.decode()
    assert rita.post(url, {"payload": "{}"}).status_code == 403
    assert not Message.objects.exists()


def test_an_admin_registers_a_members_service_application_and_deletes_it(
    member: Any, collection: Any
) -> None:
    from oauth2_provider.models import get_application_model

    ada = as_user(member("ada", "admin"))
    member("svc", "writer")
    url = reverse("console:members", kwargs={"tenant": "acme"})
    page = ada.post(
        url, {"action": "app_create", "name": "ingest", "kind": "service", "owner": "svc"}
    ).content.decode()
    app = get_application_model().objects.get(name="ingest")
    assert app.client_id in page
    assert 'id="app-client-secret"' in page
    assert 'data-application="ingest"' in ada.get(url).content.decode()
    ada.post(url, {"action": "app_delete", "application": str(app.pk)})
    assert not get_application_model().objects.filter(name="ingest").exists()
    actions = list(AuditEntry.objects.values_list("action", flat=True))
    assert "application.create" in actions
    assert "application.delete" in actions
