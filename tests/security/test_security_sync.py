"""Security of the websocket sync path and its live feed: every attempt is refused with its code
and the data is untouched; a live session loses what it may no longer have within seconds.

Driven through the real consumer with Channels' WebsocketCommunicator (docs/access.md,
docs/protocol.md "Token refresh" and "Access during a session", docs/errors.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone
from oauth2_provider.models import get_access_token_model

from accounts.access import System
from accounts.models import Membership
from accounts.services import (
    access_tokens_revoke,
    collection_perm_grant,
    collection_perm_revoke,
    key_rule_add,
    membership_remove,
    membership_set,
    tenant_get_or_create,
    token_revoke,
)
from replication.models import ErrorEvent
from replication.routing import websocket_urlpatterns
from replication.selectors import collection_state
from replication.services.documents import document_put
from replication.services.engine import collection_get_or_create
from tests.support.wire_replica import (
    ERROR,
    FEED,
    Closed,
    CommunicatorTransport,
    WireReplica,
)

pytestmark = pytest.mark.django_db(transaction=True)

APP = URLRouter(websocket_urlpatterns)
TOKEN_REFRESH = "no2.sync.token.refresh"
TOKEN_REFRESH_ACK = "no2.sync.token.refresh.ack"


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> None:
    from channels.layers import channel_layers

    channel_layers.backends = {}


@pytest.fixture(autouse=True)
def fast(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.DATAGATE = {**settings.DATAGATE, "SESSION_RECHECK_INTERVAL": 0.2}


@pytest.fixture
def world(tenant: Any, collection: Any, member: Any, make_user: Any, issue_token: Any) -> Any:
    globex = tenant_get_or_create(slug="globex")
    collection_get_or_create(tenant=globex, name="ledger")
    for doc_id in ("a", "private/1", "user-rita/1", "user-wendy/1"):
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=doc_id,
            body={"v": doc_id},
            origin="seed",
        )
    writer = member("wendy", "writer")
    reader = member("rita", "reader")
    outsider = make_user("otto")
    return {
        "tenant": tenant,
        "globex": globex,
        "collection": collection,
        "writer": writer,
        "reader": reader,
        "outsider": outsider,
        "issue": issue_token,
    }


Opener = Callable[..., Any]


@pytest.fixture
async def open_replica(world: Any) -> AsyncIterator[Opener]:
    opened: list[WebsocketCommunicator] = []

    async def open_(
        token: str,
        *,
        tenant: str = "acme",
        collection: str = "notes",
        user: str | None = None,
        capabilities: list[str] | None = None,
    ) -> WireReplica:
        path = f"/ws/datagate/{tenant}/{collection}/" + (f"{user}/" if user else "")
        communicator = WebsocketCommunicator(APP, path)
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        opened.append(communicator)
        return WireReplica(
            transport=CommunicatorTransport(communicator),
            token=token,
            tenant=tenant,
            collection=collection,
            capabilities=["live"] if capabilities is None else capabilities,
            timeout=20.0,
        )

    yield open_
    for communicator in opened:
        await communicator.disconnect()


def db(fn: Callable[..., Any]) -> Callable[..., Any]:
    return database_sync_to_async(fn)


async def state(world: Any) -> dict[str, Any]:
    return await db(collection_state)(collection_id=world["collection"].pk)


async def refused_at_connect(replica: WireReplica) -> tuple[str, int | None, str]:
    """Send Connect; return (code, close code, text) of the fatal error that must follow."""
    await replica.send(
        replica.message(
            "no2.sync.connect",
            authToken=replica.token,
            replicaName="r",
            capabilities=replica.capabilities,
        )
    )
    error = await replica.expect(ERROR)
    assert error["fatal"] is True
    closed = await replica.expect_close()
    return error["code"], closed, error["error"]


# --- refused at connect ------------------------------------------------------------------------


async def test_no_token_is_refused(open_replica: Opener, world: Any) -> None:
    before = await state(world)
    replica = await open_replica("")
    code, closed, text = await refused_at_connect(replica)
    assert (code, closed) == ("DG-1001", 4401)
    assert "failed to validate token: no token given" in text
    assert await state(world) == before


async def test_a_connect_without_an_auth_token_field_is_refused_as_no_token(
    open_replica: Opener, world: Any
) -> None:
    replica = await open_replica("")
    await replica.send(replica.message("no2.sync.connect", replicaName="r", capabilities=[]))
    error = await replica.expect(ERROR)
    assert (error["code"], error["fatal"]) == ("DG-1001", True)
    assert await replica.expect_close() == 4401


@pytest.mark.parametrize("token", ["not-a-token", "x" * 600, " "])
async def test_a_malformed_token_is_refused(open_replica: Opener, world: Any, token: str) -> None:
    before = await state(world)
    code, closed, text = await refused_at_connect(await open_replica(token))
    assert (code, closed) == ("DG-1001", 4401)
    assert "failed to validate token" in text
    assert token.strip() == "" or token not in text
    assert await state(world) == before


async def test_an_expired_token_is_refused(open_replica: Opener, world: Any) -> None:
    token = await db(world["issue"])(world["writer"], "read write", -5)
    code, closed, text = await refused_at_connect(await open_replica(token))
    assert (code, closed) == ("DG-1001", 4401)
    assert "expired" in text


async def test_a_revoked_token_is_refused(open_replica: Opener, world: Any) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    await db(token_revoke)(raw_token=token)
    code, closed, text = await refused_at_connect(await open_replica(token))
    assert (code, closed) == ("DG-1001", 4401)
    assert "unknown or revoked" in text


async def test_a_token_without_read_scope_is_refused(open_replica: Opener, world: Any) -> None:
    token = await db(world["issue"])(world["writer"], "topics")
    code, closed, _ = await refused_at_connect(await open_replica(token))
    assert (code, closed) == ("DG-1002", 4403)


async def test_another_users_url_is_refused(open_replica: Opener, world: Any) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    code, closed, _ = await refused_at_connect(await open_replica(token, user="rita"))
    assert (code, closed) == ("DG-1003", 4403)


async def test_another_tenants_collection_is_refused(open_replica: Opener, world: Any) -> None:
    # wendy writes in acme, and even holds an administer grant on acme/notes: globex is shut.
    await db(collection_perm_grant)(
        tenant=world["tenant"], collection_name="notes", perm="administer", user=world["writer"]
    )
    token = await db(world["issue"])(world["writer"], "read write")
    code, closed, text = await refused_at_connect(
        await open_replica(token, tenant="globex", collection="ledger")
    )
    assert (code, closed) == ("DG-3001", 4403)
    assert text == "DG-3001 collection not found: globex/ledger"
    # ...and she cannot create one there either.
    code, _, _ = await refused_at_connect(
        await open_replica(token, tenant="globex", collection="new")
    )
    assert code == "DG-3001"
    exists = await db(lambda: world["globex"].collections.filter(name="new").exists())()
    assert not exists


async def test_guessing_collection_names_tells_nothing(open_replica: Opener, world: Any) -> None:
    """An outsider, and a reader on a missing collection, get the same answer as for a
    collection that does not exist: the error differs only in the name asked for."""
    outsider = await db(world["issue"])(world["outsider"], "read write")
    reader = await db(world["issue"])(world["reader"], "read write")
    answers = []
    for token, tenant, name in [
        (outsider, "acme", "notes"),  # exists, may not read
        (outsider, "acme", "nope"),  # does not exist
        (outsider, "nope", "notes"),  # tenant does not exist
        (reader, "acme", "guess"),  # member, but a reader does not create
    ]:
        code, closed, text = await refused_at_connect(
            await open_replica(token, tenant=tenant, collection=name)
        )
        answers.append((code, closed, text.replace(f"{tenant}/{name}", "T/C")))
    assert set(answers) == {("DG-3001", 4403, "DG-3001 collection not found: T/C")}
    assert not await db(lambda: world["tenant"].collections.filter(name="guess").exists())()


# --- refused while syncing ---------------------------------------------------------------------


async def test_a_read_only_user_writing_is_rejected_and_nothing_changes(
    open_replica: Opener, world: Any
) -> None:
    before = await state(world)
    token = await db(world["issue"])(world["reader"], "read write")
    replica = await open_replica(token)
    replica.put("a", v="overwritten")
    replica.delete("private/1")
    ack = await replica.connect()
    assert ack["readOnly"] is True
    acks = await replica.push()
    rejected = {r["id"]: r["code"] for r in acks[0]["receipt"]["rejected"]}
    assert rejected == {"a": "DG-3002", "private/1": "DG-3002"}
    await replica.pull()
    # Live too: a feed from a reader is rejected the same way.
    replica.put("b", v="live")
    feed_ack = await replica.send_feed()
    rejected = {r["id"]: r["code"] for r in feed_ack["receipt"]["rejected"]}
    assert rejected == {"a": "DG-3002", "private/1": "DG-3002", "b": "DG-3002"}
    assert await state(world) == before
    codes = await db(lambda: set(ErrorEvent.objects.values_list("code", flat=True)))()
    assert "DG-3002" in codes


async def test_a_token_without_write_scope_cannot_push(open_replica: Opener, world: Any) -> None:
    before = await state(world)
    token = await db(world["issue"])(world["writer"], "read")
    replica = await open_replica(token)
    replica.put("a", v="overwritten")
    assert (await replica.connect())["readOnly"] is True
    acks = await replica.push()
    assert [r["code"] for r in acks[0]["receipt"]["rejected"]] == ["DG-1002"]
    assert await state(world) == before


async def test_key_rules_deny_reading_writing_and_deleting(
    open_replica: Opener, world: Any
) -> None:
    common = {"tenant": world["tenant"], "collection_name": "notes"}
    await db(key_rule_add)(
        **common,
        position=1,
        pattern="user-{username}/*",
        effect="allow",
        actions=["read", "write", "delete"],
    )
    await db(key_rule_add)(
        **common, position=2, pattern="user-*", effect="deny", actions=["read", "write", "delete"]
    )
    await db(key_rule_add)(
        **common, position=3, pattern="private/*", effect="deny", actions=["read"]
    )
    await db(key_rule_add)(**common, position=4, pattern="a", effect="deny", actions=["delete"])
    before = await state(world)
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await open_replica(token)
    replica.put("user-rita/1", v="hijack")
    replica.put("user-rita/2", v="plant")
    replica.delete("a")
    replica.put("user-wendy/2", v="mine")
    await replica.connect()
    acks = await replica.push()
    rejected = {r["id"]: r["code"] for r in acks[0]["receipt"]["rejected"]}
    assert rejected == {"user-rita/1": "DG-3003", "user-rita/2": "DG-3003", "a": "DG-3004"}
    after = await state(world)
    assert after["documents"]["user-rita/1"] == before["documents"]["user-rita/1"]
    assert "user-rita/2" not in after["documents"]
    assert "a" in after["documents"]
    assert "user-wendy/2" in after["documents"]
    # Pull: what the rules hide never arrives.
    pulled = await replica.pull()
    sent = {d["_id"] for c in pulled["chunks"] for d in c["feed"]["changeSet"]}
    assert sent == {"a", "user-wendy/1", "user-wendy/2"}
    # Live feed: a hidden change advances the markers but sends nothing of it.
    seq = replica.markers["collectionMarker"]
    await db(document_put)(
        actor=System("test"),
        collection_id=world["collection"].pk,
        doc_id="private/2",
        body={"x": 1},
        origin="seed",
    )
    await db(document_put)(
        actor=System("test"),
        collection_id=world["collection"].pk,
        doc_id="b",
        body={"x": 2},
        origin="seed",
    )
    await replica.feed_until(seq + 2)
    assert "private/2" not in replica.documents
    assert "b" in replica.documents
    sent_ids = {d["_id"] for f in replica.feeds for d in f["feed"]["changeSet"]}
    assert "private/2" not in sent_ids


# --- during a live session ---------------------------------------------------------------------


async def live(open_replica: Opener, token: str) -> WireReplica:
    replica = await open_replica(token)
    await replica.sync()
    return replica


async def closed_within(replica: WireReplica, seconds: float) -> tuple[int | None, float]:
    """Read until the server closes, applying (not acking) the feeds that come first, as a
    replica does; return the close code and how long it took."""
    started = time.monotonic()
    try:
        while True:
            message = await replica.receive(seconds)
            if message["header"]["messageType"] == FEED:
                replica.feeds.append(message)
                replica.apply_feed(message["feed"])
    except Closed as closed:
        return closed.code, time.monotonic() - started


async def test_a_revoked_token_closes_the_live_session_within_seconds(
    open_replica: Opener, world: Any
) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await live(open_replica, token)
    assert set(replica.documents) == {"a", "private/1", "user-rita/1", "user-wendy/1"}
    await db(token_revoke)(raw_token=token)
    code, took = await closed_within(replica, 15)
    assert code == 4401
    assert replica.errors[-1]["code"] == "DG-1001"
    assert "token revoked" in replica.errors[-1]["error"]
    assert took < 10


async def test_an_expiring_token_closes_the_live_session(open_replica: Opener, world: Any) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await live(open_replica, token)
    await db(
        lambda: get_access_token_model().objects.update(
            expires=timezone.now() - timedelta(seconds=1)
        )
    )()
    code, _ = await closed_within(replica, 15)
    assert code == 4401
    assert "expired" in replica.errors[-1]["error"]


async def test_a_withdrawn_permission_removes_the_documents_and_closes_the_session(
    open_replica: Opener, world: Any
) -> None:
    before = await state(world)
    token = await db(world["issue"])(world["reader"], "read write")
    replica = await live(open_replica, token)
    assert len(replica.documents) == 4
    await db(membership_remove)(user=world["reader"], tenant=world["tenant"])
    code, took = await closed_within(replica, 15)
    assert code == 4403
    assert replica.errors[-1]["code"] == "DG-3005"
    removal = replica.feeds[-1]
    assert removal["startMarkers"] == removal["endMarkers"]
    assert set(removal["feed"]["tombstoneMap"]) == set(before["documents"])
    assert replica.documents == {}
    assert took < 10
    assert await state(world) == before  # removed from the device, not from the server


async def test_a_withdrawn_grant_closes_the_session_of_a_non_member(
    open_replica: Opener, world: Any
) -> None:
    await db(collection_perm_grant)(
        tenant=world["tenant"], collection_name="notes", perm="read", user=world["outsider"]
    )
    token = await db(world["issue"])(world["outsider"], "read write")
    replica = await live(open_replica, token)
    assert len(replica.documents) == 4
    await db(collection_perm_revoke)(
        tenant=world["tenant"], collection_name="notes", perm="read", user=world["outsider"]
    )
    code, _ = await closed_within(replica, 15)
    assert code == 4403
    assert replica.documents == {}


async def test_a_new_key_rule_removes_documents_from_a_live_replica_and_it_stays_live(
    open_replica: Opener, world: Any
) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await live(open_replica, token)
    await db(key_rule_add)(
        tenant=world["tenant"],
        collection_name="notes",
        pattern="private/*",
        effect="deny",
        actions=["read"],
    )
    removal = await replica.next_feed(timeout=15)
    assert removal["feed"]["changeSet"] == []
    assert list(removal["feed"]["tombstoneMap"]) == ["private/1"]
    assert "private/1" not in replica.documents
    # Still live; later changes of hidden documents are not sent, others are.
    seq = replica.markers["collectionMarker"]
    await db(document_put)(
        actor=System("test"),
        collection_id=world["collection"].pk,
        doc_id="private/1",
        body={"x": 9},
        origin="seed",
    )
    await db(document_put)(
        actor=System("test"),
        collection_id=world["collection"].pk,
        doc_id="a",
        body={"x": 9},
        origin="seed",
    )
    await replica.feed_until(seq + 2)
    assert "private/1" not in replica.documents
    assert replica.documents["a"]["x"] == 9


async def test_a_lowered_role_makes_the_live_session_read_only(
    open_replica: Opener, world: Any
) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await live(open_replica, token)
    await db(membership_set)(user=world["writer"], tenant=world["tenant"], role="reader")
    deadline = time.monotonic() + 15
    while True:
        replica.put("a", v="late write")
        ack = await replica.send_feed()
        if ack["receipt"]["rejected"]:
            break
        assert time.monotonic() < deadline, "the write kept being accepted"
        await asyncio.sleep(0.2)
    assert ack["receipt"]["rejected"][0]["code"] in {"DG-3002", "DG-3003"}


# Every way of withdrawing access reaches a live session within an interval or two, whether
# the change sends a signal that moves the access marker (accounts/access_changes.py) or is a
# token or user change the sweep reads for itself.


def _team_member(world: Any) -> Any:
    team = Group.objects.create(name="team")
    team.user_set.add(world["outsider"])
    collection_perm_grant(tenant=world["tenant"], collection_name="notes", perm="read", group=team)
    return world["outsider"]


def _superuser(world: Any) -> Any:
    return get_user_model().objects.create_user(username="root", is_superuser=True)


def _give_membership_away(world: Any, user: Any) -> None:
    membership = Membership.objects.get(user=user, tenant=world["tenant"])
    membership.user = world["outsider"]
    membership.save()


def _demote(world: Any, user: Any) -> None:
    user = get_user_model().objects.get(pk=user.pk)
    user.is_superuser = False
    user.save()


WITHDRAWALS: dict[str, tuple[Callable[[Any], Any], Callable[[Any, Any], Any], int, str]] = {
    "removed from the group holding the grant": (
        _team_member,
        lambda world, user: user.groups.remove(Group.objects.get(name="team")),
        4403,
        "DG-3005",
    ),
    "the group's grant revoked": (
        _team_member,
        lambda world, user: collection_perm_revoke(
            tenant=world["tenant"],
            collection_name="notes",
            perm="read",
            group=Group.objects.get(name="team"),
        ),
        4403,
        "DG-3005",
    ),
    "membership given to someone else in the admin": (
        lambda world: world["reader"],
        _give_membership_away,
        4403,
        "DG-3005",
    ),
    "superuser status taken away": (_superuser, _demote, 4403, "DG-3005"),
    "user deactivated by an update (no signal)": (
        lambda world: world["writer"],
        lambda world, user: get_user_model().objects.filter(pk=user.pk).update(is_active=False),
        4401,
        "DG-1001",
    ),
    "every token of the user revoked at once": (
        lambda world: world["writer"],
        lambda world, user: access_tokens_revoke(user=user),
        4401,
        "DG-1001",
    ),
}


@pytest.mark.parametrize("withdrawal", list(WITHDRAWALS))
async def test_each_way_of_withdrawing_access_closes_the_live_session(
    open_replica: Opener, world: Any, withdrawal: str
) -> None:
    setup, withdraw, close_code, error_code = WITHDRAWALS[withdrawal]
    user = await db(setup)(world)
    replica = await live(open_replica, await db(world["issue"])(user, "read write"))
    assert len(replica.documents) == 4
    await db(withdraw)(world, user)
    code, took = await closed_within(replica, 15)
    assert (code, replica.errors[-1]["code"]) == (close_code, error_code)
    assert took < 10
    if error_code == "DG-3005":
        assert replica.documents == {}


async def test_a_fresh_token_keeps_the_session_alive(open_replica: Opener, world: Any) -> None:
    old = await db(world["issue"])(world["writer"], "read write")
    replica = await live(open_replica, old)
    fresh = await db(world["issue"])(world["writer"], "read write")
    sent = replica.message(TOKEN_REFRESH, authToken=fresh)
    await replica.send(sent)
    ack = await replica.expect(TOKEN_REFRESH_ACK)
    assert ack["header"]["correlationId"] == sent["header"]["id"]
    assert ack["scopes"] == ["read", "write"]
    assert ack["readOnly"] is False
    assert ack["expires"] > time.time() * 1000
    await db(token_revoke)(raw_token=old)
    # Several re-check intervals pass: the session lives on with the fresh token.
    await replica.expect_nothing(1.5)
    replica.put("after-refresh", v=1)
    assert (await replica.send_feed())["receipt"]["added"] == ["after-refresh"]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("garbage", "unknown or revoked"),
        ("other_user", "another user"),
        ("no_read", "lacks scope"),
        ("expired", "expired"),
    ],
)
async def test_a_bad_fresh_token_is_refused_and_the_session_keeps_its_own(
    open_replica: Opener, world: Any, kind: str, reason: str
) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await live(open_replica, token)
    fresh = {
        "garbage": lambda: "garbage",
        "other_user": lambda: world["issue"](world["reader"], "read write"),
        "no_read": lambda: world["issue"](world["writer"], "topics"),
        "expired": lambda: world["issue"](world["writer"], "read write", -5),
    }[kind]
    await replica.send(replica.message(TOKEN_REFRESH, authToken=await db(fresh)()))
    error = await replica.expect(ERROR)
    assert (error["code"], error["fatal"]) == ("DG-1004", False)
    assert reason in error["error"]
    replica.put("still-here", v=1)
    assert (await replica.send_feed())["receipt"]["added"] == ["still-here"]


async def test_token_refresh_before_connect_is_a_protocol_error(
    open_replica: Opener, world: Any
) -> None:
    token = await db(world["issue"])(world["writer"], "read write")
    replica = await open_replica(token)
    await replica.send(replica.message(TOKEN_REFRESH, authToken=token))
    error = await replica.expect(ERROR)
    assert error["code"] == "DG-2006"

    async def receive_until_closed() -> None:
        while True:
            await replica.receive()

    with pytest.raises(Closed):
        await receive_until_closed()


def test_a_recheck_costs_a_fixed_number_of_queries(
    world: Any, django_assert_max_num_queries: Any
) -> None:
    """Every live session re-checks every few seconds: keep it a handful of small queries."""
    from replication.services.sessions import access_recheck, session_open

    token = world["issue"](world["writer"], "read write")
    grant = session_open(
        tenant_slug="acme", collection_name="notes", url_user=None, raw_token=token, origin="r"
    )
    first = access_recheck(
        grant=grant, collection_name="notes", token_id=grant.token_id, scopes=frozenset({"read"})
    )
    grant.policy = first.policy
    with django_assert_max_num_queries(6):
        update = access_recheck(
            grant=grant,
            collection_name="notes",
            token_id=grant.token_id,
            scopes=frozenset({"read", "write"}),
        )
    assert update.error is None
    assert update.removals == {}
    assert update.may_push
