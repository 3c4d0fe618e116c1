"""What a Connect costs the database (issue 21, bench/connect_path.py): `session_open` decides
access once, so a reconnect storm is not multiplied by repeated role and grant look-ups."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from replication.models import Replica, ReplicaSession
from replication.services.replicas import replica_connected
from replication.services.sessions import session_open

pytestmark = [pytest.mark.storage, pytest.mark.django_db]


def _open(token: str, origin: str, collection: str = "notes") -> Any:
    return session_open(
        tenant_slug="acme",
        collection_name=collection,
        url_user=None,
        raw_token=token,
        origin=origin,
    )


def test_a_connect_asks_the_tenant_role_once(
    collection: Any, member: Any, issue_token: Any
) -> None:
    token = issue_token(member("ann", "writer"), "read write")
    _open(token, "warm")
    with CaptureQueriesContext(connection) as queries:
        grant = _open(token, "phone")
    role_queries = [q for q in queries.captured_queries if "membership" in q["sql"].lower()]
    assert len(role_queries) == 1, [q["sql"] for q in role_queries]
    assert grant.may_push
    assert grant.policy.can_read


def test_a_reader_gets_a_read_only_grant_and_an_outsider_nothing(
    collection: Any, member: Any, make_user: Any, issue_token: Any
) -> None:
    from core.errors import DataGateError

    grant = _open(issue_token(member("rita", "reader"), "read write"), "rita-phone")
    assert not grant.may_push
    assert grant.policy.can_read
    with pytest.raises(DataGateError, match="DG-3001"):
        _open(issue_token(make_user("olga"), "read write"), "olga-phone")


def test_a_writer_creating_a_collection_gets_the_policy_of_the_new_collection(
    tenant: Any, member: Any, issue_token: Any, settings: Any
) -> None:
    settings.DATAGATE = {**settings.DATAGATE, "AUTO_CREATE_COLLECTIONS": True}
    grant = _open(issue_token(member("wes", "writer"), "read write"), "wes-phone", "fresh")
    assert grant.may_push
    assert grant.policy.can_write


def test_a_connect_upserts_the_replica_in_one_statement_keeping_every_field(
    collection: Any, make_user: Any
) -> None:
    user = make_user("una")

    def connect(**kwargs: Any) -> tuple[Replica, int]:
        with CaptureQueriesContext(connection) as queries:
            replica = replica_connected(
                collection_id=collection.pk, replica_id="phone", user_id=user.pk, **kwargs
            )
        return replica, len(queries.captured_queries)

    first, cost = connect(name="notes-app", client_version="1.0", address="10.0.0.1")
    assert cost == 2  # the upsert and the session record: a new replica has no open session
    stored = Replica.objects.get(pk=first.pk)
    assert (stored.online, stored.sessions_count, stored.name) == (True, 1, "notes-app")
    assert (stored.client_version, stored.address) == ("1.0", "10.0.0.1")
    assert (first.sessions_count, first.name, first.online) == (1, "notes-app", True)
    assert first.first_seen == stored.first_seen
    assert first.last_seen == stored.last_seen
    Replica.objects.filter(pk=first.pk).update(
        online=False, last_acked_seq=7, pushed_count=3, last_seen=stored.first_seen
    )

    again, cost = connect(client_version="1.1", address="10.0.0.2")  # gives no name
    assert cost == 3  # the upsert, the crashed session's end, the new session
    stored = Replica.objects.get(pk=first.pk)
    assert again.pk == first.pk
    assert (stored.online, stored.sessions_count, stored.name) == (True, 2, "notes-app")
    assert (stored.client_version, stored.address) == ("1.1", "10.0.0.2")
    assert (stored.last_acked_seq, stored.pushed_count) == (7, 3)  # positions are kept
    assert stored.first_seen == first.first_seen
    assert stored.last_seen > first.first_seen
    assert (again.sessions_count, again.last_acked_seq, again.name) == (2, 7, "notes-app")
    sessions = list(ReplicaSession.objects.filter(replica_id=first.pk).order_by("started_at"))
    assert [s.ended_at is None for s in sessions] == [False, True]
    assert sessions[1].address == "10.0.0.2"

    other = replica_connected(collection_id=collection.pk, replica_id="laptop", user_id=user.pk)
    assert other.pk != first.pk
    assert other.sessions_count == 1


def test_the_policy_inputs_read_in_one_query_are_what_the_single_lookups_find(
    tenant: Any, collection: Any, member: Any, make_user: Any
) -> None:
    """document_policy reads role, grants and key rules in one UNION query: the same answers
    as membership_role, guardian's get_perms and the rules that name the user, a group or all."""
    from django.contrib.auth.models import Group
    from django.db.models import Q
    from guardian.shortcuts import get_perms

    from accounts import access
    from accounts.models import KeyRule, RuleEffect
    from accounts.services import collection_perm_grant, key_rule_add, tenant_get_or_create
    from replication.services.engine import collection_get_or_create

    other = collection_get_or_create(tenant=tenant, name="other")[0]
    globex = tenant_get_or_create(slug="globex")
    team, crew = Group.objects.create(name="team"), Group.objects.create(name="crew")
    users = {
        "writer": member("wes", "writer"),
        "reader": member("rita", "reader"),
        "granted": make_user("gus"),
        "teamed": make_user("tia"),
        "crewed": make_user("cal"),
        "outsider": make_user("olga"),
    }
    users["teamed"].groups.add(team)
    users["crewed"].groups.add(team, crew)
    collection_perm_grant(
        tenant=tenant, collection_name="notes", perm="read", user=users["granted"]
    )
    collection_perm_grant(tenant=tenant, collection_name="notes", perm="write", group=team)
    collection_perm_grant(tenant=tenant, collection_name="other", perm="administer", group=crew)
    rule = {"tenant": tenant, "collection_name": "notes"}
    key_rule_add(**rule, pattern="private/*", effect="deny", actions=["read"])
    key_rule_add(**rule, pattern="{username}/*", effect="allow", actions=["read"], position=5)
    key_rule_add(**rule, pattern="x*", effect="allow", actions=["write"], user=users["reader"])
    key_rule_add(**rule, pattern="x*", effect="deny", actions=["write"], position=100, group=crew)
    key_rule_add(**rule, pattern="t*", effect="deny", actions=["delete"], group=team)
    key_rule_add(
        tenant=tenant, collection_name="other", pattern="*", effect="deny", actions=["read"]
    )

    for name, user in users.items():
        for where, found in ((tenant, collection), (tenant, other), (globex, collection)):
            role, grants, rules = access._policy_inputs(
                user=user, tenant=where, collection_name=found.name, collection=found
            )
            assert role == access.membership_role(user=user, tenant=where), name
            expected = frozenset(get_perms(user, found)) if found.tenant_id == where.pk else set()
            assert grants == expected, (name, found.name)
            subject = Q(user=user) | Q(group__in=user.groups.all()) | Q(user=None, group=None)
            stored = KeyRule.objects.filter(subject, tenant=where, collection_name=found.name)
            order = sorted(stored, key=lambda r: (r.position, r.effect != RuleEffect.DENY, r.pk))
            fields = ("pk", "pattern", "position", "effect", "for_read", "for_write", "for_delete")
            assert [tuple(getattr(r, f) for f in fields) for r in rules] == [
                tuple(getattr(r, f) for f in fields) for r in order
            ], (name, found.name)
    with CaptureQueriesContext(connection) as queries:
        policy = access.document_policy(
            user=users["crewed"], tenant=tenant, collection_name="notes", collection=collection
        )
    assert len(queries.captured_queries) == 1
    assert policy.can_write
    assert not policy.may_write("x1")
    assert not policy.may_delete("t1")
    assert policy.may_read("cal/a")
    assert not policy.may_read("private/a")


def test_a_connect_costs_six_queries_and_a_new_replica_five(
    collection: Any, member: Any, issue_token: Any
) -> None:
    """Pinned so that it cannot grow back (it was 16, bench/RESULTS.md): the token with its
    user (1), the collection with its tenant (1), the policy's role, grants and key rules
    (1), the replica's upsert (1), the end of a session left open (1, not for a new replica)
    and the session record (1)."""
    token = issue_token(member("ann", "writer"), "read write")
    with CaptureQueriesContext(connection) as queries:
        _open(token, "phone")
    assert len(queries.captured_queries) == 5, [q["sql"][:80] for q in queries.captured_queries]
    with CaptureQueriesContext(connection) as queries:
        grant = _open(token, "phone")
    assert len(queries.captured_queries) == 6, [q["sql"][:80] for q in queries.captured_queries]
    assert grant.may_push


def test_the_token_check_in_one_plain_query_finds_what_the_orm_lookup_finds(
    make_user: Any,
) -> None:
    """token_authenticate reads the user with the token's fields in one plain SQL query; the
    answers (and `expires`, converted as the ORM converts it) are the ORM lookup's."""
    import hashlib
    from datetime import timedelta

    from django.utils import timezone
    from oauth2_provider.models import get_access_token_model

    from accounts.services import application_create, token_pair_issue
    from accounts.tokens import TokenRejected, token_authenticate, token_user

    owner, ann = make_user("owner"), make_user("ann")
    service = application_create(name="indexer", owner=owner, kind="service")
    application = service.application
    mine = token_pair_issue(user=ann, scopes=["read", "write"], application=application)
    plain = token_pair_issue(user=ann, scopes=["read"])
    model = get_access_token_model()
    theirs = model.objects.create(
        user=None,
        application=application,
        token="",
        token_checksum=hashlib.sha256(b"service-token").hexdigest(),
        expires=timezone.now() + timedelta(hours=1),
        scope="read topics",
    )
    for raw, user in (
        (mine.access_token, ann),
        (plain.access_token, ann),
        ("service-token", owner),
    ):
        stored = model.objects.select_related("user", "application__user").get(
            token_checksum=hashlib.sha256(raw.encode()).hexdigest()
        )
        with CaptureQueriesContext(connection) as queries:
            info = token_authenticate(raw)
        assert len(queries.captured_queries) == 1
        assert token_user(stored) == user
        assert (info.user.pk, info.user.get_username()) == (user.pk, user.get_username())
        assert info.scopes == frozenset(stored.scope.split())
        assert info.expires == stored.expires
        assert (info.token_id, info.application_id) == (stored.pk, stored.application_id)
    assert theirs.pk
    model.objects.filter(pk=theirs.pk).update(user=None, application=None)
    with pytest.raises(TokenRejected, match="not bound to a user"):
        token_authenticate("service-token")
    with pytest.raises(TokenRejected, match="unknown or revoked"):
        token_authenticate("no-such-token")
