"""Who may use the topics endpoint: every refusal has its own code and close code."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from oauth2_provider.models import get_access_token_model

from accounts.services import tenant_get_or_create
from replication.models import ErrorEvent
from tests.support.topics_conversation import Talk, code_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(member: Any) -> Any:
    return member("alice", "writer")


async def refused(token: Any, tenant: str = "acme") -> tuple[dict[str, Any], Any]:
    talk = Talk(tenant)
    await talk.open()
    await talk.send("connect", authToken=token, device="phone")
    error = await talk.next()
    closed = await talk.next()
    return error, closed.get("close")


async def test_no_token_is_refused_4401(alice: Any) -> None:
    error, close = await refused(None)
    assert (code_of(error), close, error["fatal"]) == ("DG-1001", 4401, True)
    assert error["error"] == "DG-1001 failed to validate token: no token given"


async def test_a_malformed_token_is_refused_4401(alice: Any) -> None:
    error, close = await refused("x" * 600)
    assert (code_of(error), close) == ("DG-1001", 4401)
    assert "malformed" in error["error"]


async def test_an_unknown_token_is_refused_4401(alice: Any) -> None:
    error, close = await refused("made-up-token")
    assert (code_of(error), close) == ("DG-1001", 4401)


async def test_an_expired_token_is_refused_4401(alice: Any, issue_token: Any) -> None:
    token = await sync_to_async(issue_token)(alice, "topics", expires_in=-60)
    error, close = await refused(token)
    assert (code_of(error), close) == ("DG-1001", 4401)
    assert "expired" in error["error"]


async def test_a_revoked_token_is_refused_4401(alice: Any, issue_token: Any) -> None:
    token = await sync_to_async(issue_token)(alice, "topics")
    await sync_to_async(get_access_token_model().objects.all().delete)()
    error, close = await refused(token)
    assert (code_of(error), close) == ("DG-1001", 4401)
    assert "revoked" in error["error"]


async def test_a_token_of_an_inactive_user_is_refused_4401(alice: Any, issue_token: Any) -> None:
    token = await sync_to_async(issue_token)(alice, "topics")
    alice.is_active = False
    await sync_to_async(alice.save)()
    error, close = await refused(token)
    assert (code_of(error), close) == ("DG-1001", 4401)


async def test_a_token_without_the_topics_scope_is_refused_4403(
    alice: Any, issue_token: Any
) -> None:
    token = await sync_to_async(issue_token)(alice, "read write")
    error, close = await refused(token)
    assert (code_of(error), close) == ("DG-1002", 4403)


async def test_another_tenant_is_refused_like_a_missing_one_4403(
    alice: Any, issue_token: Any
) -> None:
    await sync_to_async(tenant_get_or_create)(slug="globex")
    token = await sync_to_async(issue_token)(alice, "topics")
    error, close = await refused(token, tenant="globex")
    missing, missing_close = await refused(token, tenant="nowhere")
    assert (code_of(error), close) == ("DG-6001", 4403)
    assert (code_of(missing), missing_close) == ("DG-6001", 4403)
    assert error["error"].replace("globex", "X") == missing["error"].replace("nowhere", "X")


async def test_a_user_with_no_role_anywhere_is_refused(make_user: Any, issue_token: Any) -> None:
    stranger = await sync_to_async(make_user)("stranger")
    await sync_to_async(tenant_get_or_create)(slug="acme")
    token = await sync_to_async(issue_token)(stranger, "topics")
    error, close = await refused(token)
    assert (code_of(error), close) == ("DG-6001", 4403)


async def test_a_reader_is_refused_creating_publishing_and_deleting(
    member: Any, issue_token: Any
) -> None:
    writer = await sync_to_async(member)("wendy", "writer")
    reader = await sync_to_async(member)("rita", "reader")
    owner = Talk()
    await owner.connect(await sync_to_async(issue_token)(writer, "topics"))
    await owner.request("create", topic="news")
    talk = Talk()
    await talk.connect(await sync_to_async(issue_token)(reader, "topics"))
    assert code_of(await talk.request("create", topic="x")) == "DG-6004"
    assert code_of(await talk.request("create", topic="x", scope="local")) == "DG-6004"
    reply = await talk.request("publish", topic="news", messages=[{"messageId": "1"}])
    assert code_of(reply) == "DG-6006"
    assert code_of(await talk.request("delete", topic="news")) == "DG-6005"
    await talk.close()
    await owner.close()


async def test_every_refusal_is_recorded_without_the_token(alice: Any, issue_token: Any) -> None:
    token = await sync_to_async(issue_token)(alice, "topics", expires_in=-60)
    await refused(token)
    events: list[Any] = await sync_to_async(
        lambda: list(ErrorEvent.objects.values("code", "text", "context"))
    )()
    assert [e["code"] for e in events] == ["DG-1001"]
    assert token not in str(events)
    assert events[0]["context"]["endpoint"] == "topics"
