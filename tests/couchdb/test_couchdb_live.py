"""Live `_changes` feeds (longpoll with heartbeat, continuous, eventsource) wake on the hub's
doorbell, and end when the token is revoked or the user's access changes (docs/couchdb.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from tests.support.couchdb_inprocess import couch, couch_raw
from tests.support.fast_accounts import fast_cli_application, person

pytestmark = [pytest.mark.django_db(transaction=True)]

DB = "acme/notes"


@pytest.fixture
def token(collection: Any, issue_token: Any, settings: Any) -> str:
    settings.DATAGATE = {**settings.DATAGATE, "SESSION_RECHECK_INTERVAL": 0.3}
    fast_cli_application()
    return str(issue_token(person("ann", "acme", "writer"), "read write"))


async def _since(token: str) -> str:
    _, info = await couch("GET", f"{DB}/", token)
    return str(info["update_seq"])


async def test_longpoll_with_heartbeat_sends_newlines_until_a_change(token: str) -> None:
    since = await _since(token)
    waiting = asyncio.ensure_future(
        couch_raw(
            "GET",
            f"{DB}/_changes",
            token,
            query={"feed": "longpoll", "since": since, "heartbeat": 100},
            timeout=20,
        )
    )
    await asyncio.sleep(0.6)
    await couch("PUT", f"{DB}/a", token, {"n": 1})
    status, raw = await asyncio.wait_for(waiting, 15)
    assert status == 200
    assert raw.startswith(b"\n")
    body = json.loads(raw)
    assert [r["id"] for r in body["results"]] == ["a"]


@pytest.mark.parametrize("feed", ["continuous", "eventsource"])
async def test_streaming_feeds_send_every_change_until_the_timeout(token: str, feed: str) -> None:
    await couch("PUT", f"{DB}/old", token, {"n": 0})
    streaming = asyncio.ensure_future(
        couch_raw(
            "GET",
            f"{DB}/_changes",
            token,
            query={"feed": feed, "since": "0", "timeout": 1500, "include_docs": "true"},
            timeout=20,
        )
    )
    await asyncio.sleep(0.4)
    await couch("PUT", f"{DB}/new", token, {"n": 1})
    status, raw = await asyncio.wait_for(streaming, 15)
    assert status == 200
    if feed == "continuous":
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert [row["id"] for row in lines[:-1]] == ["old", "new"]
        assert lines[1]["doc"]["n"] == 1
        assert lines[-1]["last_seq"] == lines[1]["seq"]
    else:
        events = [block for block in raw.decode().split("\n\n") if block.strip()]
        rows = [json.loads(block.split("\n")[0].removeprefix("data: ")) for block in events]
        assert [row["id"] for row in rows] == ["old", "new"]
        assert events[1].split("\n")[1] == f"id: {rows[1]['seq']}"


async def test_a_revoked_token_ends_a_waiting_feed(token: str) -> None:
    from accounts.services import token_revoke

    since = await _since(token)
    waiting = asyncio.ensure_future(
        couch(
            "GET",
            f"{DB}/_changes",
            token,
            query={"feed": "longpoll", "since": since, "heartbeat": 10000},
            timeout=20,
        )
    )
    await asyncio.sleep(0.3)
    await sync_to_async(token_revoke)(raw_token=token)
    status, body = await asyncio.wait_for(waiting, 10)
    assert status == 200
    assert body["results"] == []
    status, body = await couch("GET", f"{DB}/_changes", token)
    assert status == 401
    assert body["reason"].startswith("DG-1001")


async def test_a_key_rule_change_ends_a_waiting_feed(token: str) -> None:
    from accounts.models import Tenant
    from accounts.services import key_rule_add

    since = await _since(token)
    waiting = asyncio.ensure_future(
        couch(
            "GET",
            f"{DB}/_changes",
            token,
            query={"feed": "continuous", "since": since, "heartbeat": 10000},
            timeout=20,
        )
    )
    await asyncio.sleep(0.3)
    tenant = await sync_to_async(Tenant.objects.get)(slug="acme")
    await sync_to_async(key_rule_add)(
        tenant=tenant, collection_name="notes", pattern="x-*", effect="deny", actions=["read"]
    )
    status, body = await asyncio.wait_for(waiting, 10)
    assert status == 200
    assert body == {"last_seq": since}
