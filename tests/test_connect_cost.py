"""What a Connect costs the database (issue 21, bench/connect_path.py): `session_open` decides
access once, so a reconnect storm is not multiplied by repeated role and grant look-ups."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from replication.services.sessions import session_open

pytestmark = pytest.mark.django_db


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
