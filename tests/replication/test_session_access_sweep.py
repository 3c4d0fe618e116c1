"""The access sweep of live sessions (replication/services/sessions.py).

A sweep costs a fixed number of queries when nothing changed, however many sessions a process
holds; a change re-decides only the sessions it touches, once per (user, tenant, collection),
including a change made while a session was being authorised. tests/accounts/test_access_changes.py
checks the marker and the tokens query; the conversations in
tests/security/test_security_sync.py show each kind of change reaching live replicas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.access import System
from accounts.access_changes import access_version
from accounts.models import AccessMarker
from accounts.services import key_rule_add, membership_set
from core.errors import DataGateError, ErrorCode
from replication.consumer_access import SessionAccess
from replication.protocol import machine as mc
from replication.services.documents import document_put
from replication.services.sessions import (
    AccessUpdate,
    SessionGrant,
    SweepItem,
    session_open,
    sweep_read,
    sweep_recheck,
)

pytestmark = pytest.mark.django_db

READ_WRITE = frozenset({"read", "write"})


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def open_grant(token: str, collection_name: str = "notes") -> SessionGrant:
    return session_open(
        tenant_slug="acme",
        collection_name=collection_name,
        url_user=None,
        raw_token=token,
        origin="r",
    )


def item_for(
    grant: SessionGrant, *, baseline: int | None, collection_name: str = "notes"
) -> SweepItem:
    return SweepItem(
        grant=grant,
        collection_name=collection_name,
        token_id=grant.token_id,
        scopes=READ_WRITE,
        baseline=baseline,
    )


@pytest.fixture
def sessions(collection: Any, member: Any, issue_token: Any) -> list[SessionGrant]:
    """30 sessions of 30 readers on acme/notes."""
    for doc_id in ("a", "private/1"):
        document_put(
            actor=System("test"), collection_id=collection.pk, doc_id=doc_id, body={}, origin="seed"
        )
    return [open_grant(issue_token(member(f"reader{n}", "reader"))) for n in range(30)]


def queries(fn: Callable[[], Any]) -> tuple[Any, int]:
    with CaptureQueriesContext(connection) as captured:
        result = fn()
    return result, len(captured)


# --- what a sweep costs ------------------------------------------------------------------------


def test_a_sweep_with_nothing_changed_costs_two_queries_for_3_or_30_sessions(
    sessions: list[SessionGrant],
) -> None:
    version = access_version()
    counts = {}
    for n in (3, 30):
        items = [item_for(grant, baseline=version) for grant in sessions[:n]]
        found, counts[n] = queries(functools.partial(sweep_read, items=items))
        assert found.stale == set()
        assert found.token_errors == {}
        assert found.version == version
    assert counts == {3: 2, 30: 2}  # the tokens, the marker's counter


def test_a_change_re_decides_only_the_sessions_it_touches(
    sessions: list[SessionGrant], tenant: Any
) -> None:
    version = access_version()
    items = [item_for(grant, baseline=version) for grant in sessions]
    membership_set(user=sessions[5].user, tenant=tenant, role="writer")
    found, count = queries(lambda: sweep_read(items=items))
    assert count == 3  # the tokens, the counter, the scopes that moved
    assert found.stale == {5}
    (update,) = sweep_recheck(items=[items[5]])
    assert update.error is None
    assert update.may_push
    assert update.removals == {}
    # A key rule on the collection touches every session on it.
    key_rule_add(
        tenant=tenant, collection_name="notes", pattern="private/*", effect="deny", actions=["read"]
    )
    found = sweep_read(items=items)
    assert found.stale == set(range(30))


def test_a_sweep_decides_once_per_user_tenant_and_collection(
    collection: Any, member: Any, issue_token: Any, tenant: Any
) -> None:
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="private/1",
        body={},
        origin="seed",
    )
    user = member("wendy", "writer")
    grants = [open_grant(issue_token(user)) for _ in range(20)]
    key_rule_add(
        tenant=tenant, collection_name="notes", pattern="private/*", effect="deny", actions=["read"]
    )
    counts = {}
    for n in (1, 20):
        items = [item_for(grant, baseline=0) for grant in grants[:n]]
        updates, counts[n] = queries(functools.partial(sweep_recheck, items=items))
        assert [list(update.removals) for update in updates] == [["private/1"]] * n
    assert counts[1] == counts[20]


def test_a_change_made_while_a_session_was_being_authorised_is_not_missed(
    collection: Any, member: Any, issue_token: Any, tenant: Any
) -> None:
    """The consumer reads its baseline before `session_open`: a change landing between that
    read and the session's first sweep is seen by the sweep."""
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="private/1",
        body={},
        origin="seed",
    )
    token = issue_token(member("wendy", "writer"))
    baseline = access_version()
    grant = open_grant(token)
    key_rule_add(
        tenant=tenant, collection_name="notes", pattern="private/*", effect="deny", actions=["read"]
    )
    item = item_for(grant, baseline=baseline)
    assert sweep_read(items=[item]).stale == {0}
    (update,) = sweep_recheck(items=[item])
    assert list(update.removals) == ["private/1"]


def test_a_session_without_a_baseline_is_re_decided_only_if_its_scopes_ever_changed(
    collection: Any, member: Any, make_user: Any, issue_token: Any
) -> None:
    root = make_user("root", is_superuser=True)  # reads everything, no membership: no change
    grants = [open_grant(issue_token(root)), open_grant(issue_token(member("rita", "reader")))]
    found = sweep_read(items=[item_for(grant, baseline=None) for grant in grants])
    assert found.stale == {1}


def test_a_marker_that_went_back_re_decides_every_session(sessions: list[SessionGrant]) -> None:
    version = access_version()
    AccessMarker.objects.all().delete()  # a restored database, say
    found = sweep_read(items=[item_for(grant, baseline=version) for grant in sessions[:3]])
    assert found.stale == {0, 1, 2}


def test_the_sweep_sees_users_as_they_are_now(
    collection: Any, make_user: Any, issue_token: Any
) -> None:
    root = make_user("root", is_superuser=True)
    grant = open_grant(issue_token(root))
    get_user_model().objects.filter(pk=root.pk).update(is_superuser=False)
    (update,) = sweep_recheck(items=[item_for(grant, baseline=0)])
    assert update.error is not None
    assert update.error.code == "DG-3005"


# --- the session's side ----------------------------------------------------------------------


class FakeConsumer:
    def __init__(self, grant: SessionGrant) -> None:
        import asyncio

        self.grant = grant
        self.closed = False
        self.collection_name = "notes"
        self.loop = asyncio.get_running_loop()
        self.session = mc.Session(tenant="acme", collection="notes", server_id="s")


async def test_a_sweep_update_is_dropped_when_a_refresh_changed_the_session_meanwhile() -> None:
    grant: Any = type("Grant", (), {"token_id": 1, "policy": None, "read_filter": None})()
    access = SessionAccess(FakeConsumer(grant), scopes=READ_WRITE, baseline=3)
    item = access.sweep_item()
    assert item is not None
    withdrawn = DataGateError(ErrorCode.TOKEN_INVALID, fatal=True, reason="token revoked")
    access.generation += 1  # what applying a token refresh does
    assert await access._take(AccessUpdate(error=withdrawn), item, 7) == []
    access.confirm(item=item, version=7)
    assert access.baseline == 3
    # Without the refresh, the same update closes the session.
    item = access.sweep_item()
    assert item is not None
    effects = await access._take(AccessUpdate(error=withdrawn), item, 7)
    assert any(isinstance(effect, mc.Close) for effect in effects)
