"""The access marker (accounts/access_changes.py) and the tokens query of the access sweep.

Every way of changing an input of an access decision, through the services, the admin, a
cascade or a queryset delete, moves the marker of the scope it touches, and changes that alter
nobody's access leave it alone. Marked `storage`: the upsert and the counter's row lock run on
PostgreSQL too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, update_last_login
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from oauth2_provider.models import get_access_token_model

from accounts import access_changes
from accounts.access_changes import (
    COUNTER,
    access_changed,
    access_version,
    collection_scope,
    tenant_scope,
    user_scope,
)
from accounts.models import AccessMarker, KeyRule, Membership
from accounts.services import (
    access_tokens_revoke,
    application_create,
    collection_perm_grant,
    collection_perm_revoke,
    key_rule_add,
    key_rule_remove,
    membership_remove,
    membership_set,
    tenant_delete,
    token_pair_issue,
    token_revoke,
)
from accounts.tokens import token_authenticate, token_still_valid, tokens_still_valid
from replication.models import Collection
from replication.services.engine import collection_get_or_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def queries(fn: Callable[[], Any]) -> tuple[Any, int]:
    with CaptureQueriesContext(connection) as captured:
        result = fn()
    return result, len(captured)


# --- tokens: one query for all of them --------------------------------------------------------


def test_tokens_are_checked_together_with_the_reasons_one_at_a_time_gives(
    make_user: Any, issue_token: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob, owner = make_user("alice"), make_user("bob"), make_user("owner")
    service = application_create(name="svc", owner=owner, kind="service").application
    raw = {
        "valid": issue_token(alice),
        "revoked": issue_token(alice),
        "expired": issue_token(alice),
        "inactive": issue_token(bob),
        "service": token_pair_issue(user=None, scopes=["read"], application=service).access_token,
    }
    ids = {name: token_authenticate(token).token_id for name, token in raw.items()}
    token_revoke(raw_token=raw["revoked"])
    # Changes that send no signal: the sweep reads the tokens and their users themselves.
    get_access_token_model().objects.filter(pk=ids["expired"]).update(
        expires=timezone.now() - timedelta(seconds=1)
    )
    get_user_model().objects.filter(pk__in=[bob.pk, owner.pk]).update(is_active=False)
    one_at_a_time = {
        pk: reason for pk in ids.values() if (reason := token_still_valid(token_id=pk)) is not None
    }
    assert set(one_at_a_time) == {ids[n] for n in ("revoked", "expired", "inactive", "service")}
    found, count = queries(lambda: tokens_still_valid(token_ids=list(ids.values()) * 2))
    assert (found, count) == (one_at_a_time, 1)
    monkeypatch.setattr(access_changes, "MAX_IDS_PER_QUERY", 2)
    found, count = queries(lambda: tokens_still_valid(token_ids=ids.values()))
    assert (found, count) == (one_at_a_time, 3)


# --- every way of changing access moves the marker ----------------------------------------------


@pytest.fixture
def world(tenant: Any, collection: Any, member: Any, make_user: Any) -> dict[str, Any]:
    secret = collection_get_or_create(tenant=tenant, name="secret")[0]
    team = Group.objects.create(name="team")
    reader = member("rita", "reader")
    outsider = make_user("otto")
    team.user_set.add(outsider)
    collection_perm_grant(tenant=tenant, collection_name="notes", perm="read", group=team)
    rule = key_rule_add(
        tenant=tenant, collection_name="notes", pattern="p/*", effect="deny", actions=["read"]
    )
    return {
        "tenant": tenant,
        "notes": collection,
        "secret": secret,
        "team": team,
        "reader": reader,
        "outsider": outsider,
        "rule": rule,
        "make_user": make_user,
    }


def moved_scopes(action: Callable[[], Any]) -> set[str]:
    """The scopes an action stamped (the counter row left out)."""
    before = access_version()
    action()
    rows = AccessMarker.objects.filter(version__gt=before).exclude(scope=COUNTER)
    moved = set(rows.values_list("scope", flat=True))
    assert (access_version() > before) == bool(moved)
    return moved


def _move_membership(w: dict[str, Any]) -> None:
    membership = Membership.objects.get(user=w["reader"])
    membership.user = w["outsider"]
    membership.save()


def _move_rule(w: dict[str, Any]) -> None:
    rule = KeyRule.objects.get(pk=w["rule"].pk)
    rule.collection_name = "secret"
    rule.save()


def _rename_collection(w: dict[str, Any]) -> None:
    notes = Collection.objects.get(pk=w["notes"].pk)
    notes.name = "jottings"
    notes.save()


def _save_user(w: dict[str, Any], **changes: Any) -> None:
    user = get_user_model().objects.get(pk=w["reader"].pk)
    for name, value in changes.items():
        setattr(user, name, value)
    user.save()


CHANGES: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], set[str]]]]
CHANGES = {
    "membership created": (
        lambda w: membership_set(user=w["outsider"], tenant=w["tenant"], role="reader"),
        lambda w: {user_scope(w["outsider"].pk)},
    ),
    "role changed": (
        lambda w: membership_set(user=w["reader"], tenant=w["tenant"], role="writer"),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "membership removed": (
        lambda w: membership_remove(user=w["reader"], tenant=w["tenant"]),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "membership moved to another user": (
        _move_membership,
        lambda w: {user_scope(w["reader"].pk), user_scope(w["outsider"].pk)},
    ),
    "user granted": (
        lambda w: collection_perm_grant(
            tenant=w["tenant"], collection_name="notes", perm="write", user=w["outsider"]
        ),
        lambda w: {collection_scope(w["tenant"].pk, "notes")},
    ),
    "group granted": (
        lambda w: collection_perm_grant(
            tenant=w["tenant"], collection_name="secret", perm="read", group=w["team"]
        ),
        lambda w: {collection_scope(w["tenant"].pk, "secret")},
    ),
    "group grant revoked": (
        lambda w: collection_perm_revoke(
            tenant=w["tenant"], collection_name="notes", perm="read", group=w["team"]
        ),
        lambda w: {collection_scope(w["tenant"].pk, "notes")},
    ),
    "key rule added": (
        lambda w: key_rule_add(
            tenant=w["tenant"],
            collection_name="secret",
            pattern="*",
            effect="deny",
            actions=["read"],
        ),
        lambda w: {collection_scope(w["tenant"].pk, "secret")},
    ),
    "key rule removed": (
        lambda w: key_rule_remove(rule_id=w["rule"].pk),
        lambda w: {collection_scope(w["tenant"].pk, "notes")},
    ),
    "key rule moved to another collection": (
        _move_rule,
        lambda w: {collection_scope(w["tenant"].pk, n) for n in ("notes", "secret")},
    ),
    "user joins a group": (
        lambda w: w["reader"].groups.add(w["team"]),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "group gains users": (
        lambda w: w["team"].user_set.add(w["reader"]),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "user leaves a group": (
        lambda w: w["outsider"].groups.remove(w["team"]),
        lambda w: {user_scope(w["outsider"].pk)},
    ),
    "group loses users": (
        lambda w: w["team"].user_set.remove(w["outsider"]),
        lambda w: {user_scope(w["outsider"].pk)},
    ),
    "user's groups cleared": (
        lambda w: w["outsider"].groups.clear(),
        lambda w: {user_scope(w["outsider"].pk)},
    ),
    "group cleared": (
        lambda w: w["team"].user_set.clear(),
        lambda w: {user_scope(w["outsider"].pk)},
    ),
    "group deleted": (
        lambda w: Group.objects.filter(pk=w["team"].pk).delete(),
        lambda w: {collection_scope(w["tenant"].pk, "notes")},
    ),
    "user deactivated": (
        lambda w: _save_user(w, is_active=False),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "user made superuser": (
        lambda w: _save_user(w, is_superuser=True),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "user renamed": (
        lambda w: _save_user(w, username="rhoda"),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "user deleted": (
        lambda w: get_user_model().objects.filter(pk=w["reader"].pk).delete(),
        lambda w: {user_scope(w["reader"].pk)},
    ),
    "collection renamed": (
        _rename_collection,
        lambda w: {collection_scope(w["tenant"].pk, n) for n in ("notes", "jottings")},
    ),
    "collection deleted": (
        lambda w: Collection.objects.filter(pk=w["secret"].pk).delete(),
        lambda w: {collection_scope(w["tenant"].pk, "secret")},
    ),
    "tenant deleted": (
        lambda w: tenant_delete(slug="acme"),
        lambda w: {
            tenant_scope(w["tenant"].pk),
            collection_scope(w["tenant"].pk, "notes"),
            collection_scope(w["tenant"].pk, "secret"),
            user_scope(w["reader"].pk),
        },
    ),
    # Changes that change nobody's access leave the marker alone.
    "a login": (lambda w: update_last_login(get_user_model(), w["reader"]), lambda w: set()),
    "a new user": (lambda w: w["make_user"]("newbie"), lambda w: set()),
    "a new collection": (
        lambda w: collection_get_or_create(tenant=w["tenant"], name="fresh"),
        lambda w: set(),
    ),
    "tokens issued and revoked": (
        lambda w: (
            token_pair_issue(user=w["reader"], scopes=["read"]),
            access_tokens_revoke(user=w["reader"]),
        ),
        lambda w: set(),
    ),
}


@pytest.mark.storage
@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_of_an_access_input_moves_the_marker_of_its_scope(
    world: dict[str, Any], change: str
) -> None:
    action, expected = CHANGES[change]
    assert moved_scopes(lambda: action(world)) == expected(world)


@pytest.mark.storage
@pytest.mark.django_db(transaction=True)
def test_concurrent_changes_each_move_the_counter_once() -> None:
    errors: list[BaseException] = []

    def bump(n: int) -> None:
        try:
            for i in range(10):
                access_changed(scopes=[user_scope(n), tenant_scope(i)])
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=bump, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert access_version() == 40
    versions = dict(AccessMarker.objects.values_list("scope", "version"))
    assert max(versions[user_scope(n)] for n in range(4)) == 40
    assert sorted(versions[tenant_scope(i)] for i in range(10))[-1] == 40
