"""The accounts commands: datagate_tenant, datagate_user, datagate_grant, datagate_token."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command, load_command_class

from accounts import access
from accounts.models import KeyRule, Membership, Tenant
from accounts.tokens import TokenRejected, token_authenticate
from replication.services.engine import collection_get_or_create

pytestmark = pytest.mark.django_db

COMMANDS = ["datagate_tenant", "datagate_user", "datagate_grant", "datagate_token"]


def run(*args: str, stdin: str = "") -> str:
    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        call_command(*args, stdout=out)
    finally:
        sys.stdin = old
    return out.getvalue()


def refused(*args: str, match: str, code: int = 1) -> None:
    with pytest.raises(CommandError, match=match) as info:
        run(*args)
    assert info.value.returncode == code


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_explains_itself(name: str) -> None:
    command = load_command_class("accounts", name)
    text = command.create_parser("manage.py", name).format_help()
    assert "Exit status" in text
    assert len(text) > 300


def test_tenant_create_list_delete() -> None:
    assert "created tenant acme" in run("datagate_tenant", "create", "acme", "--name", "Acme")
    refused("datagate_tenant", "create", "acme", match="already exists")
    refused("datagate_tenant", "create", "bad slug!", match="slug")
    rows = json.loads(run("datagate_tenant", "list", "--json"))
    assert rows == [{"slug": "acme", "name": "Acme", "members": 0}]
    assert run("datagate_tenant", "list").splitlines() == ["slug\tname\tmembers", "acme\tAcme\t0"]
    refused("datagate_tenant", "delete", "acme", match="--yes")
    assert "deleted" in run("datagate_tenant", "delete", "acme", "--yes")
    refused("datagate_tenant", "delete", "acme", "--yes", match="no tenant")
    assert not Tenant.objects.exists()


def test_user_create_with_password_from_stdin_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    run("datagate_tenant", "create", "acme")
    out = run(
        "datagate_user",
        "create",
        "alice",
        "--password-stdin",
        "--tenant",
        "acme",
        "--role",
        "writer",
        stdin="s3cret-pass\n",
    )
    assert "s3cret-pass" not in out
    assert authenticate(username="alice", password="s3cret-pass") is not None
    assert Membership.objects.get(user__username="alice").role == "writer"
    monkeypatch.setenv("BOB_PASSWORD", "another-pass")
    run("datagate_user", "create", "bob", "--password-env", "BOB_PASSWORD")
    assert authenticate(username="bob", password="another-pass") is not None
    refused("datagate_user", "create", "bob", "--password-env", "BOB_PASSWORD", match="exists")
    refused("datagate_user", "create", "carol", "--password-env", "UNSET_VAR", match="not set")
    refused("datagate_user", "create", "carol", "--password-stdin", match="empty")
    assert not get_user_model().objects.filter(username="carol").exists()


def test_user_role_and_list() -> None:
    run("datagate_tenant", "create", "acme")
    run("datagate_user", "create", "alice", "--password-stdin", stdin="pw-alice-123\n")
    run("datagate_user", "role", "alice", "--tenant", "acme", "--role", "reader")
    rows = json.loads(run("datagate_user", "list", "--tenant", "acme", "--json"))
    assert rows == [
        {"username": "alice", "active": True, "superuser": False, "roles": "acme:reader"}
    ]
    run("datagate_user", "role", "alice", "--tenant", "acme", "--role", "none")
    assert json.loads(run("datagate_user", "list", "--tenant", "acme", "--json")) == []
    refused("datagate_user", "role", "alice", "--tenant", "acme", "--role", "none", match="no role")
    refused(
        "datagate_user", "role", "nobody", "--tenant", "acme", "--role", "reader", match="no user"
    )
    refused(
        "datagate_user", "role", "alice", "--tenant", "nope", "--role", "reader", match="no tenant"
    )


def test_grant_revoke_rules_and_list(make_user: Any, tenant: Any, collection: Any) -> None:
    bob = make_user("bob")
    run("datagate_grant", "grant", "acme/notes", "read", "--user", "bob")
    assert access.access_collection_read(user=bob, tenant=tenant, collection_name="notes")
    run("datagate_grant", "grant", "acme/notes", "write", "--group", "editors")
    out = run(
        "datagate_grant",
        "rule",
        "acme/notes",
        "--pattern",
        "private/*",
        "--deny",
        "--actions",
        "read",
        "--position",
        "5",
    )
    rule = KeyRule.objects.get()
    assert f"added rule {rule.pk}" in out
    assert not access.access_document_read(
        user=bob, tenant=tenant, collection_name="notes", doc_id="private/x"
    )
    rows = json.loads(run("datagate_grant", "list", "acme/notes", "--json"))
    assert {r["subject"] for r in rows} == {"user bob", "group editors", "everyone"}
    run("datagate_grant", "unrule", str(rule.pk))
    run("datagate_grant", "revoke", "acme/notes", "read", "--user", "bob")
    assert not access.access_collection_read(user=bob, tenant=tenant, collection_name="notes")
    refused("datagate_grant", "unrule", str(rule.pk), match="no key rule")
    # A grant on a collection that does not exist yet creates it, as `rule` accepts one.
    granted = json.loads(
        run("datagate_grant", "grant", "acme/later", "read", "--user", "bob", "--json")
    )
    assert granted == {"granted": "read", "collection": "acme/later"}
    assert access.access_collection_read(user=bob, tenant=tenant, collection_name="later")
    refused("datagate_grant", "grant", "acme/Bad Name", "read", "--user", "bob", match="letters")
    refused("datagate_grant", "grant", "acme", "read", "--user", "bob", match="TENANT/COLLECTION")
    refused("datagate_grant", "revoke", "acme/notes", "read", "--group", "nobody", match="no group")
    refused(
        "datagate_grant",
        "rule",
        "acme/notes",
        "--pattern",
        "*",
        "--allow",
        "--actions",
        "list",
        match="actions must be",
    )


def test_token_with_role_refresh_and_revoke(make_user: Any, tenant: Any) -> None:
    alice = make_user("alice")
    data = json.loads(
        run(
            "datagate_token",
            "alice",
            "--tenant",
            "acme",
            "--role",
            "writer",
            "--with-refresh",
            "--json",
            "--scope",
            "read",
        )
    )
    assert Membership.objects.get(user=alice).role == "writer"
    assert data["token_type"] == "Bearer"
    assert data["scope"] == "read"
    assert token_authenticate(data["access_token"]).user == alice
    lines = run("datagate_token", "--refresh", "-", stdin=data["refresh_token"] + "\n").split()
    assert len(lines) == 2
    with pytest.raises(TokenRejected):
        token_authenticate(data["access_token"])
    assert token_authenticate(lines[0]).scopes == {"read"}
    assert "revoked access token" in run("datagate_token", f"--revoke={lines[0]}")
    with pytest.raises(TokenRejected):
        token_authenticate(lines[0])
    # `--opt=TOKEN`: a token may start with "-".
    refused("datagate_token", f"--revoke={lines[0]}", match="unknown or already revoked")
    refused("datagate_token", f"--refresh={data['refresh_token']}", match="unknown or revoked")
    refused("datagate_token", match="name a USER", code=2)
    refused("datagate_token", "alice", "--tenant", "acme", match="go together", code=2)


def test_token_scripts_see_one_line_per_token(make_user: Any) -> None:
    make_user("alice")
    assert len(run("datagate_token", "alice").split()) == 1
    assert len(run("datagate_token", "alice", "--with-refresh").split()) == 2


def test_grants_need_an_existing_collection_but_rules_do_not(make_user: Any, tenant: Any) -> None:
    make_user("bob")
    run("datagate_grant", "rule", "acme/later", "--pattern", "*", "--deny", "--actions", "write")
    assert json.loads(run("datagate_grant", "list", "acme/later", "--json"))[0]["kind"] == "rule"
    collection_get_or_create(tenant=tenant, name="later")
    run("datagate_grant", "grant", "acme/later", "administer", "--user", "bob")
