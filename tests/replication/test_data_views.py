"""Data views: managed by admins (services, `datagate_view`, the HTTP API), read through by
anyone who may read the collection, never showing more than the reader's key rules allow."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.access import System
from accounts.models import AuditEntry
from accounts.services import key_rule_add
from core.errors import DataGateError
from replication import data_views
from replication.services.documents import document_put
from tests.support.fast_accounts import fast_cli_application, person

BASE = "/api/v1/tenants/acme/collections/tasks"
OPEN_TASKS = {"status": "open", "owner": "{username}"}
SYSTEM = System("test")


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    cache.clear()


@pytest.fixture
def tasks(tenant: Any) -> Any:
    from replication.services.engine import collection_get_or_create

    found = collection_get_or_create(tenant=tenant, name="tasks")[0]
    rows: dict[str, dict[str, Any]] = {
        "t1": {"status": "open", "owner": "rita", "title": "one"},
        "t2": {"status": "done", "owner": "rita", "title": "two"},
        "t3": {"status": "open", "owner": "wendy", "title": "three"},
        "t4": {"status": "open", "owner": "rita", "title": "four", "secret": True},
    }
    for doc_id, body in rows.items():
        document_put(actor=SYSTEM, collection_id=found.pk, doc_id=doc_id, body=body, origin="t")
    return found


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def tokens(issue_token: Any, tasks: Any) -> dict[str, str]:
    fast_cli_application()
    return {
        "admin": issue_token(person("ada", "acme", "admin"), "read write"),
        "rita": issue_token(person("rita", "acme", "writer"), "read write"),
        "wendy": issue_token(person("wendy", "acme", "reader"), "read"),
    }


def test_admins_create_views_and_the_audit_log_records_it(tokens: dict[str, str]) -> None:
    admin = _client(tokens["admin"])
    made = admin.post(
        f"{BASE}/views/",
        {"name": "open-tasks", "selector": OPEN_TASKS, "fields": ["title"]},
        format="json",
    )
    assert made.status_code == 201, made.content
    assert made.json()["version"] == 1
    listed = _client(tokens["wendy"]).get(f"{BASE}/views/").json()["views"]
    assert [v["name"] for v in listed] == ["open-tasks"]
    changed = admin.put(
        f"{BASE}/views/open-tasks/", {"selector": {"status": "open"}}, format="json"
    ).json()
    assert changed["version"] == 2
    assert admin.delete(f"{BASE}/views/open-tasks/").status_code == 204
    actions = list(AuditEntry.objects.values_list("action", flat=True).order_by("pk"))
    assert actions[-3:] == ["view.create", "view.change", "view.delete"]


def test_readers_may_not_manage_views(tokens: dict[str, str]) -> None:
    answer = _client(tokens["rita"]).post(
        f"{BASE}/views/", {"name": "mine", "selector": OPEN_TASKS}, format="json"
    )
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "DG-4108"


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({"name": "v", "selector": {"status": {"$regex": "o"}}}, "DG-4102", "status.$regex"),
        ({"name": "v", "selector": {"a": {"$gt": [1]}}}, "DG-4101", "a.$gt"),
        ({"name": "v", "selector": {"a": "{nobody}"}}, "DG-4104", "nobody"),
        ({"name": "no spaces", "selector": {}}, "DG-4107", "no spaces"),
        ({"name": "v", "selector": {}, "fields": ["a..b"]}, "DG-4101", "fields[0]"),
    ],
)
def test_bad_definitions_get_a_code_naming_the_part(
    tokens: dict[str, str], body: dict[str, Any], code: str, names: str
) -> None:
    answer = _client(tokens["admin"]).post(f"{BASE}/views/", body, format="json")
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == code
    assert names in error["message"]


def test_a_view_shows_each_reader_their_own_open_tasks(tokens: dict[str, str], tasks: Any) -> None:
    data_views.view_create(
        actor=SYSTEM,
        tenant=tasks.tenant,
        collection_name="tasks",
        name="open-tasks",
        selector=OPEN_TASKS,
        fields=["title", "owner"],
    )
    page = _client(tokens["rita"]).get(f"{BASE}/views/open-tasks/documents/").json()
    assert [d["_id"] for d in page["documents"]] == ["t1", "t4"]
    assert "secret" not in page["documents"][1]  # projected
    assert page["documents"][0]["title"] == "one"
    wendy = _client(tokens["wendy"]).get(f"{BASE}/views/open-tasks/documents/").json()
    assert [d["_id"] for d in wendy["documents"]] == ["t3"]
    first = _client(tokens["rita"]).get(f"{BASE}/views/open-tasks/documents/?limit=1").json()
    assert first["next"] == "t1"
    missing = _client(tokens["rita"]).get(f"{BASE}/views/nope/documents/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "DG-4105"


def test_a_view_never_shows_more_than_the_key_rules(tokens: dict[str, str], tasks: Any) -> None:
    data_views.view_create(
        actor=SYSTEM, tenant=tasks.tenant, collection_name="tasks", name="open", selector={}
    )
    key_rule_add(
        tenant=tasks.tenant,
        collection_name="tasks",
        pattern="t4",
        effect="deny",
        actions=["read"],
    )
    page = _client(tokens["rita"]).get(f"{BASE}/views/open/documents/").json()
    assert [d["_id"] for d in page["documents"]] == ["t1", "t2", "t3"]


def test_the_command_manages_views(tasks: Any) -> None:
    out = StringIO()
    call_command(
        "datagate_view", "create", "acme/tasks", "open-tasks", json.dumps(OPEN_TASKS), stdout=out
    )
    assert "created=acme/tasks/open-tasks" in out.getvalue()
    out = StringIO()
    call_command("datagate_view", "list", "acme/tasks", "--json", stdout=out)
    assert json.loads(out.getvalue())[0]["selector"] == OPEN_TASKS
    with pytest.raises(CommandError, match="DG-4102"):
        call_command("datagate_view", "update", "acme/tasks", "open-tasks", '{"a": {"$x": 1}}')
    with pytest.raises(CommandError, match="DG-4106"):
        call_command("datagate_view", "create", "acme/tasks", "open-tasks", "{}")
    call_command("datagate_view", "delete", "acme/tasks", "open-tasks", stdout=StringIO())
    with pytest.raises(DataGateError):
        data_views.view_get(
            actor=SYSTEM, tenant=tasks.tenant, collection_name="tasks", name="open-tasks"
        )


def test_the_console_manages_and_previews_views(
    client: Any, member: Any, tasks: Any, settings: Any
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    page = "/console/t/acme/c/tasks/views/"
    admin = member("ada", "admin")
    client.force_login(admin)
    made = client.post(
        page,
        {"action": "create", "name": "open", "selector": '{"status": "open"}', "fields": "title"},
        follow=True,
    )
    assert "Created view open." in made.content.decode()
    bad = client.post(page, {"action": "create", "name": "bad", "selector": '{"a": {"$x": 1}}'})
    assert "DG-4102" in bad.content.decode()
    preview = client.get(page + "?preview=open").content.decode()
    assert 'data-doc="t1"' in preview
    assert 'data-doc="t2"' not in preview
    client.post(page, {"action": "delete", "name": "open"})
    assert data_views.views_list(actor=admin, tenant=tasks.tenant, collection_name="tasks") == []
    reader = member("rita", "reader")
    client.force_login(reader)
    assert client.post(page, {"action": "create", "name": "x", "selector": "{}"}).status_code == 403
    assert 'id="view-form"' not in client.get(page).content.decode()


def test_changes_through_a_view_bring_documents_in_and_take_them_out(
    tokens: dict[str, str], tasks: Any
) -> None:
    data_views.view_create(
        actor=SYSTEM, tenant=tasks.tenant, collection_name="tasks", name="mine", selector=OPEN_TASKS
    )
    rita = _client(tokens["rita"])
    first = rita.get(f"{BASE}/views/mine/changes/?limit=1").json()
    assert [d["_id"] for d in first["feed"]["changeSet"]] == ["t1"]
    assert first["hasMore"]
    rest = rita.get(first["next"]).json()
    assert [d["_id"] for d in rest["feed"]["changeSet"]] == ["t4"]
    assert not rest["hasMore"]
    assert rest["feed"]["tombstoneMap"] == {}
    markers = rest["endMarkers"]
    document_put(
        actor=SYSTEM,
        collection_id=tasks.pk,
        doc_id="t1",
        body={"status": "done", "owner": "rita"},
        origin="t",
    )
    query = f"collectionMarker={markers['collectionMarker']}"
    query += f"&tombstoneMarker={markers['tombstoneMarker']}"
    later = rita.get(f"{BASE}/views/mine/changes/?{query}").json()
    assert later["feed"]["changeSet"] == []
    assert list(later["feed"]["tombstoneMap"]) == ["t1"]  # the removal
    assert not later["reset"]
    whole = rita.get(f"{BASE}/changes/").json()
    assert whole["endMarkers"]["tombstoneMarker"] != markers["tombstoneMarker"]  # per view
