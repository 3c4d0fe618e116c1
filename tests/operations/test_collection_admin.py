"""Collections managed by operators: the services (access, DG-72xx, the audit log) and
`datagate_collection`, the command that scripts use."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.access import System
from accounts.audit import audit_entries
from accounts.models import AuditEntry
from accounts.services import access_token_issue, access_tokens_revoke, membership_set
from core.errors import DataGateError, ErrorCode
from replication import collection_services
from replication.models import Collection
from replication.services.documents import document_put

pytestmark = pytest.mark.django_db
SEED = System("test seed")


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def code_of(call: Any) -> ErrorCode:
    with pytest.raises(DataGateError) as info:
        call()
    return info.value.error


def test_create_set_ttl_list_and_delete_with_the_command(tenant: Any) -> None:
    created = json.loads(
        run("datagate_collection", "create", "acme/events", "--tombstone-ttl-days", "7", "--json")
    )
    assert created["collection"] == "acme/events"
    assert created["tombstone_ttl_days"] == 7
    with pytest.raises(CommandError, match="DG-7201") as info:
        run("datagate_collection", "create", "acme/events")
    assert info.value.returncode == 1
    run("datagate_collection", "ttl", "acme/events", "--journal-retention-days", "90")
    rows = json.loads(run("datagate_collection", "list", "acme", "--json"))
    assert rows[0]["tombstone_ttl_days"] == 7
    assert rows[0]["journal_retention_days"] == 90
    run("datagate_collection", "ttl", "acme/events", "--tombstone-ttl-days", "default")
    assert Collection.objects.get(name="events").tombstone_ttl_days is None
    with pytest.raises(CommandError, match="DG-7205"):
        run("datagate_collection", "delete", "acme/events", "--confirm", "other")
    deleted = json.loads(
        run("datagate_collection", "delete", "acme/events", "--confirm", "events", "--json")
    )
    assert deleted == {"deleted": "acme/events", "documents": 0, "tombstones": 0}
    assert not Collection.objects.filter(name="events").exists()
    actions = [e.action for e in audit_entries(tenant=tenant)]
    assert actions == [
        "collection.delete",
        "collection.settings",
        "collection.settings",
        "collection.create",
    ]
    assert AuditEntry.objects.all()[0].actor_name == "system: command datagate_collection"


def test_only_admins_and_writers_create_and_only_admins_delete(
    tenant: Any, member: Any, collection: Any
) -> None:
    reader, writer, admin = (
        member("rita", "reader"),
        member("walt", "writer"),
        member("ada", "admin"),
    )
    assert (
        code_of(
            lambda: collection_services.collection_create(actor=reader, tenant=tenant, name="x")
        )
        == ErrorCode.COLLECTION_CREATE_DENIED
    )
    made = collection_services.collection_create(actor=writer, tenant=tenant, name="x")
    assert (
        code_of(
            lambda: collection_services.collection_delete(
                actor=writer, collection=made, confirm="x"
            )
        )
        == ErrorCode.COLLECTION_ADMIN_DENIED
    )
    document_put(collection_id=made.pk, doc_id="d1", body={"a": 1}, origin="t", actor=SEED)
    counts = collection_services.collection_delete(actor=admin, collection=made, confirm="x")
    assert counts["documents"] == 1
    entry = audit_entries(tenant=tenant)[0]
    assert (entry.actor_name, entry.action, entry.target) == ("ada", "collection.delete", "acme/x")
    other = collection_services.collection_create(actor=admin, tenant=tenant, name="y")
    assert (
        code_of(
            lambda: collection_services.collection_for_admin(
                actor=reader, tenant=tenant, name="nope"
            )
        )
        == ErrorCode.COLLECTION_NOT_FOUND
    )
    assert other.pk != made.pk


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(days=st.one_of(st.integers(max_value=0), st.integers(min_value=3651), st.booleans()))
def test_a_bad_ttl_is_dg_7204_and_changes_nothing(days: Any, collection: Any) -> None:
    def change() -> None:
        collection_services.collection_settings_set(
            actor=SEED, collection=collection, tombstone_ttl_days=days, journal_retention_days=None
        )

    assert code_of(change) == ErrorCode.COLLECTION_BAD_SETTING
    collection.refresh_from_db()
    assert collection.tombstone_ttl_days is None


def test_operator_actions_on_members_and_tokens_are_in_the_tenants_audit_log(
    tenant: Any, member: Any, make_user: Any
) -> None:
    admin = member("ada", "admin")
    bob = make_user("bob")
    membership_set(user=bob, tenant=tenant, role="reader", actor=admin)
    access_token_issue(user=bob, scopes=["read"], actor=admin)
    access_tokens_revoke(user=bob, actor=admin, tenant=tenant)
    membership_set(user=bob, tenant=tenant, role="writer")  # no actor: not an operator action
    actions = [(e.actor_name, e.action) for e in AuditEntry.objects.order_by("pk")]
    assert actions == [("ada", "member.set"), ("ada", "token.issue"), ("ada", "token.revoke")]
    assert [e.action for e in audit_entries(tenant=tenant)] == ["token.revoke", "member.set"]
