"""Every branch of every access function (accounts/access.py), table-driven.

The world: tenant `acme` with collections `notes` and `secret`, tenant `globex` with its own
`notes`; users with each tenant role, outsiders with guardian grants (own or through a group),
an inactive writer and a superuser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Group

from accounts import access
from accounts.models import Role
from accounts.services import (
    collection_perm_grant,
    collection_perm_revoke,
    key_rule_add,
    membership_set,
    tenant_get_or_create,
)
from replication.services.engine import collection_get_or_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """This world makes a dozen users per test: hash their passwords cheaply."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class World:
    acme: Any
    globex: Any
    notes: Any
    secret: Any
    globex_notes: Any
    users: dict[str, Any]


@pytest.fixture
def world(make_user: Any) -> World:
    acme = tenant_get_or_create(slug="acme")
    globex = tenant_get_or_create(slug="globex")
    notes = collection_get_or_create(tenant=acme, name="notes")[0]
    secret = collection_get_or_create(tenant=acme, name="secret")[0]
    globex_notes = collection_get_or_create(tenant=globex, name="notes")[0]
    users: dict[str, Any] = {}
    for name, role in [("admin", Role.ADMIN), ("writer", Role.WRITER), ("reader", Role.READER)]:
        users[name] = make_user(name)
        membership_set(user=users[name], tenant=acme, role=role)
    users["outsider"] = make_user("outsider")
    users["globex_admin"] = make_user("globex_admin")
    membership_set(user=users["globex_admin"], tenant=globex, role=Role.ADMIN)
    users["inactive"] = make_user("inactive", is_active=False)
    membership_set(user=users["inactive"], tenant=acme, role=Role.WRITER)
    users["root"] = make_user("root", is_superuser=True)
    for perm in ("read", "write", "administer"):
        users[f"granted_{perm}"] = make_user(f"granted_{perm}")
        collection_perm_grant(
            tenant=acme, collection_name="notes", perm=perm, user=users[f"granted_{perm}"]
        )
    team = Group.objects.create(name="team")
    collection_perm_grant(tenant=acme, collection_name="notes", perm="write", group=team)
    users["team_member"] = make_user("team_member")
    users["team_member"].groups.add(team)
    users["anonymous"] = AnonymousUser()
    users["nobody"] = None
    return World(acme, globex, notes, secret, globex_notes, users)


# --- tenant and collection level ------------------------------------------------------------

# (user, role in acme, tenant_read, tenant_admin, collection_create)
TENANT_TABLE = [
    ("nobody", None, False, False, False),
    ("anonymous", None, False, False, False),
    ("inactive", None, False, False, False),
    ("outsider", None, False, False, False),
    ("globex_admin", None, False, False, False),
    ("granted_administer", None, False, False, False),
    ("reader", Role.READER, True, False, False),
    ("writer", Role.WRITER, True, False, True),
    ("admin", Role.ADMIN, True, True, True),
    ("root", Role.ADMIN, True, True, True),
]


@pytest.mark.parametrize(("who", "role", "read", "admin", "create"), TENANT_TABLE)
def test_tenant_level_decisions_follow_the_role(
    world: World, who: str, role: str | None, read: bool, admin: bool, create: bool
) -> None:
    user = world.users[who]
    assert access.membership_role(user=user, tenant=world.acme) == role
    assert access.access_tenant_read(user=user, tenant=world.acme) is read
    assert access.access_tenant_admin(user=user, tenant=world.acme) is admin
    assert access.access_collection_create(user=user, tenant=world.acme) is create


# (user, collection name, read, write, admin)
COLLECTION_TABLE = [
    ("nobody", "notes", False, False, False),
    ("anonymous", "notes", False, False, False),
    ("inactive", "notes", False, False, False),
    ("outsider", "notes", False, False, False),
    ("globex_admin", "notes", False, False, False),
    ("reader", "notes", True, False, False),
    ("writer", "notes", True, True, False),
    ("admin", "notes", True, True, True),
    ("root", "notes", True, True, True),
    ("granted_read", "notes", True, False, False),
    ("granted_write", "notes", True, True, False),
    ("granted_administer", "notes", True, True, True),
    ("team_member", "notes", True, True, False),
    # Grants are per collection: nothing on `secret`, nor on one that does not exist.
    ("granted_administer", "secret", False, False, False),
    ("team_member", "secret", False, False, False),
    ("granted_read", "missing", False, False, False),
    # Tenant roles cover collections that do not exist yet (connect may create them).
    ("reader", "missing", True, False, False),
    ("writer", "missing", True, True, False),
]


@pytest.mark.parametrize(("who", "name", "read", "write", "admin"), COLLECTION_TABLE)
def test_collection_level_decisions_combine_roles_and_grants(
    world: World, who: str, name: str, read: bool, write: bool, admin: bool
) -> None:
    user = world.users[who]
    kwargs = {"user": user, "tenant": world.acme, "collection_name": name}
    assert access.access_collection_read(**kwargs) is read
    assert access.access_collection_write(**kwargs) is write
    assert access.access_collection_admin(**kwargs) is admin


@pytest.mark.parametrize("who", ["granted_read", "granted_write", "granted_administer"])
def test_a_collection_of_another_tenant_grants_nothing(world: World, who: str) -> None:
    """A caller passing acme's collection object while asking about globex gets nothing."""
    user = world.users[who]
    kwargs = {"user": user, "tenant": world.globex, "collection_name": "notes"}
    assert access.access_collection_read(**kwargs, collection=world.notes) is False
    assert access.access_collection_write(**kwargs, collection=world.notes) is False
    assert access.access_collection_admin(**kwargs, collection=world.notes) is False
    assert access.access_collection_read(**kwargs) is False


def test_a_passed_collection_object_saves_the_lookup(
    world: World, django_assert_num_queries: Any
) -> None:
    user = world.users["granted_read"]
    assert access.collection_lookup(tenant=world.acme, collection_name="x", collection=world.notes)
    with django_assert_num_queries(3):  # membership, user perms, group perms
        assert access.access_collection_read(
            user=user, tenant=world.acme, collection_name="notes", collection=world.notes
        )


def test_revoking_a_grant_withdraws_access(world: World) -> None:
    user = world.users["granted_write"]
    collection_perm_revoke(tenant=world.acme, collection_name="notes", perm="write", user=user)
    assert not access.access_collection_read(user=user, tenant=world.acme, collection_name="notes")


@pytest.mark.parametrize(
    ("scopes", "scope", "allowed"),
    [(["read"], "read", True), (["read"], "write", False), ([], "topics", False)],
)
def test_access_scope(scopes: list[str], scope: str, allowed: bool) -> None:
    assert access.access_scope(scopes=scopes, scope=scope) is allowed


# --- documents and key rules ----------------------------------------------------------------


@pytest.fixture
def rules(world: World) -> World:
    """The example rule set of docs/access.md on acme/notes."""
    team = Group.objects.get(name="team")
    add = key_rule_add
    common = {"tenant": world.acme, "collection_name": "notes"}
    add(
        **common,
        position=10,
        pattern="user-{username}/*",
        effect="allow",
        actions=["read", "write", "delete"],
    )
    add(**common, position=20, pattern="user-*", effect="deny", actions=["read", "write", "delete"])
    add(**common, position=30, pattern="public/*", effect="allow", actions=["read"])
    add(**common, position=30, pattern="public/*", effect="deny", actions=["write", "delete"])
    add(**common, position=40, pattern="team/*", effect="allow", actions=["write"], group=team)
    add(**common, position=50, pattern="team/*", effect="deny", actions=["write"])
    add(**common, position=60, pattern="frozen/*", effect="deny", actions=["delete"])
    add(**common, position=60, pattern="frozen/*", effect="allow", actions=["delete"])  # deny first
    add(
        **common,
        position=70,
        pattern="hidden-?",
        effect="deny",
        actions=["read"],
        user=world.users["reader"],
    )
    return world


# (user, doc id, read, write, delete)
DOCUMENT_TABLE = [
    # Own space: allowed by rule 10, whatever the rest says.
    ("writer", "user-writer/a", True, True, True),
    ("reader", "user-reader/a", True, False, False),  # rules never exceed the role
    # Someone else's space: rule 20 denies.
    ("writer", "user-reader/a", False, False, False),
    ("granted_write", "user-writer/x", False, False, False),
    # public/*: everyone reads, nobody but exempt users writes.
    ("writer", "public/news", True, False, False),
    ("reader", "public/news", True, False, False),
    # team/*: the group's allow comes before everyone's deny.
    ("team_member", "team/plan", True, True, True),
    ("writer", "team/plan", True, False, True),
    # Same position: deny is tried before allow.
    ("writer", "frozen/x", True, True, False),
    # A rule for one user only; `?` is one character.
    ("reader", "hidden-1", False, False, False),
    ("reader", "hidden-12", True, False, False),
    ("writer", "hidden-1", True, True, True),
    # No rule matches: the collection level stands.
    ("writer", "plain", True, True, True),
    ("reader", "plain", True, False, False),
    ("outsider", "plain", False, False, False),
    ("inactive", "user-inactive/a", False, False, False),
    # Exempt from key rules: tenant admins, collection administrators, superusers.
    ("admin", "user-reader/a", True, True, True),
    ("granted_administer", "public/news", True, True, True),
    ("root", "user-writer/a", True, True, True),
]


@pytest.mark.parametrize(("who", "doc_id", "read", "write", "delete"), DOCUMENT_TABLE)
def test_document_decisions_apply_key_rules_in_order(
    rules: World, who: str, doc_id: str, read: bool, write: bool, delete: bool
) -> None:
    user = rules.users[who]
    kwargs = {"user": user, "tenant": rules.acme, "collection_name": "notes", "doc_id": doc_id}
    assert access.access_document_read(**kwargs) is read
    assert access.access_document_write(**kwargs) is write
    assert access.access_document_delete(**kwargs) is delete
    predicate = access.document_read_filter(user=user, tenant=rules.acme, collection_name="notes")
    assert (predicate is None or predicate(doc_id)) is read


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("outsider", "nothing"),  # may not read the collection: a predicate refusing all
        ("admin", None),  # exempt: no per-id check at all
        ("writer", "predicate"),
    ],
)
def test_read_filter_is_none_without_rules_and_a_predicate_with_them(
    rules: World, who: str, expected: str | None
) -> None:
    predicate = access.document_read_filter(
        user=rules.users[who], tenant=rules.acme, collection_name="notes"
    )
    if expected is None:
        assert predicate is None
    elif expected == "nothing":
        assert predicate is not None
        assert not predicate("plain")
    else:
        assert predicate is not None
        assert predicate("plain")
        assert not predicate("user-x/1")


def test_read_filter_is_none_for_a_collection_without_rules(world: World) -> None:
    for who in ("reader", "writer", "granted_read"):
        assert (
            access.document_read_filter(
                user=world.users[who], tenant=world.acme, collection_name="notes"
            )
            is None
        )


def test_username_is_escaped_in_patterns(world: World, make_user: Any, member: Any) -> None:
    user = make_user("odd[1]")
    membership_set(user=user, tenant=world.acme, role=Role.WRITER)
    common = {"tenant": world.acme, "collection_name": "notes"}
    key_rule_add(**common, position=1, pattern="u/{username}/*", effect="allow", actions=["write"])
    key_rule_add(**common, position=2, pattern="u/*", effect="deny", actions=["write"])
    policy = access.document_policy(user=user, tenant=world.acme, collection_name="notes")
    assert policy.may_write("u/odd[1]/x")
    assert not policy.may_write("u/odd1/x")


def test_rules_of_other_collections_and_tenants_do_not_apply(world: World) -> None:
    key_rule_add(
        tenant=world.acme, collection_name="secret", pattern="*", effect="deny", actions=["read"]
    )
    key_rule_add(
        tenant=world.globex, collection_name="notes", pattern="*", effect="deny", actions=["read"]
    )
    assert access.access_document_read(
        user=world.users["reader"], tenant=world.acme, collection_name="notes", doc_id="a"
    )


def test_the_policy_is_compiled_with_a_fixed_number_of_queries(
    rules: World, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(6):
        policy = access.document_policy(
            user=rules.users["writer"], tenant=rules.acme, collection_name="notes"
        )
    predicate = policy.read_filter
    assert predicate is not None
    with django_assert_max_num_queries(0):
        assert [predicate(f"user-writer/{i}") for i in range(1000)] == [True] * 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"effect": "maybe", "actions": ["read"]}, "unknown effect"),
        ({"effect": "allow", "actions": []}, "actions must be"),
        ({"effect": "allow", "actions": ["read", "list"]}, "actions must be"),
    ],
)
def test_bad_key_rules_are_refused(world: World, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        key_rule_add(tenant=world.acme, collection_name="notes", pattern="*", **kwargs)


def test_bad_grants_are_refused(world: World) -> None:
    user = world.users["outsider"]
    with pytest.raises(ValueError, match="unknown permission"):
        collection_perm_grant(tenant=world.acme, collection_name="notes", perm="own", user=user)
    with pytest.raises(LookupError, match="no collection"):
        collection_perm_grant(tenant=world.acme, collection_name="nope", perm="read", user=user)
    with pytest.raises(ValueError, match="exactly one"):
        collection_perm_grant(tenant=world.acme, collection_name="notes", perm="read")
