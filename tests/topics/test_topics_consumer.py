"""Scripted conversations with the topics endpoint: every message, and the bad inputs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from replication.models import ErrorEvent
from tests.support.topics_conversation import Talk, code_of, offsets
from topics.models import ConsumerOffset, Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # PBKDF2 costs about a second per user on this loaded machine; these tests need none.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def tokens(member: Any, issue_token: Any) -> dict[str, str]:
    alice = member("alice", "writer")
    bob = member("bob", "writer")
    root = member("root", "admin")
    rita = member("rita", "reader")
    return {
        "alice": issue_token(alice, "topics"),
        "bob": issue_token(bob, "topics"),
        "root": issue_token(root, "topics"),
        "rita": issue_token(rita, "topics"),
    }


async def connected(token: str, device: str = "phone") -> Talk:
    talk = Talk()
    await talk.connect(token, device)
    return talk


async def test_connect_ack_carries_the_user_device_and_flow_settings(tokens: Any) -> None:
    talk = Talk()
    await talk.open()
    ack = await talk.request("connect", authToken=tokens["alice"], device="phone")
    assert ack["header"]["messageType"] == "datagate.topic.connect.ack"
    assert ack["header"]["userName"] == "alice"
    assert ack["header"]["transactionId"] == talk.transaction_id
    assert ack["device"] == "phone"
    assert ack["commitShare"] == 0.5
    assert ack["pageSize"] == 100
    await talk.close()


async def test_create_list_publish_subscribe_commit_unsubscribe_delete(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    created = await talk.request("create", topic="news", scope="global", pageSize=10)
    assert created["header"]["messageType"] == "datagate.topic.create.ack"
    assert created["topic"]["name"] == "news"
    assert created["topic"]["pageSize"] == 10

    ack = await talk.request(
        "publish",
        topic="news",
        messages=[{"messageId": f"m{i}", "payload": {"n": i}} for i in range(3)],
    )
    assert ack["header"]["messageType"] == "datagate.topic.publish.ack"
    assert ack["offsets"] == [1, 2, 3]

    listed = await talk.request("list")
    assert listed["header"]["messageType"] == "datagate.topic.list.ack"
    (news,) = listed["topics"]
    assert (news["name"], news["messageCount"], news["lastOffset"], news["pageSize"]) == (
        "news",
        3,
        3,
        10,
    )

    sub = await talk.request("subscribe", topic="news", **{"from": "beginning"})
    assert sub["header"]["messageType"] == "datagate.topic.subscribe.ack"
    assert (sub["nextOffset"], sub["committed"], sub["lastOffset"]) == (1, 0, 3)
    batch = await talk.batch()
    assert offsets(batch) == [1, 2, 3]
    assert batch["messages"][0]["payload"] == {"n": 0}
    assert batch["messages"][0]["messageId"] == "m0"
    assert batch["messages"][0]["publisher"] == "alice"

    commit = await talk.request("commit", topic="news", offset=3)
    assert commit["header"]["messageType"] == "datagate.topic.commit.ack"
    assert commit["offset"] == 3

    # Live: a later publish is delivered on the open subscription.
    await talk.request("publish", topic="news", messages=[{"messageId": "m3", "payload": 3}])
    assert offsets(await talk.batch()) == [4]

    unsub = await talk.request("unsubscribe", topic="news")
    assert unsub["header"]["messageType"] == "datagate.topic.unsubscribe.ack"
    deleted = await talk.request("delete", topic="news")
    assert deleted["header"]["messageType"] == "datagate.topic.delete.ack"
    assert (await talk.request("list"))["topics"] == []
    await talk.close()


async def test_several_subscriptions_on_one_connection(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    for name in ("a", "b"):
        await talk.request("create", topic=name)
        await talk.request("publish", topic=name, messages=[{"messageId": "x", "payload": name}])
    await talk.request("subscribe", topic="a", **{"from": "beginning"})
    await talk.request("subscribe", topic="b", **{"from": "beginning"})
    got = {}
    for _ in range(2):
        batch = await talk.batch()
        got[batch["topic"]] = [m["payload"] for m in batch["messages"]]
    assert got == {"a": ["a"], "b": ["b"]}
    await talk.close()


async def test_subscribe_from_committed_resumes_after_the_committed_offset(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="jobs")
    await talk.request(
        "publish", topic="jobs", messages=[{"messageId": str(i)} for i in range(1, 6)]
    )
    await talk.request("commit", topic="jobs", offset=2)
    sub = await talk.request("subscribe", topic="jobs")  # `from` defaults to committed
    assert (sub["nextOffset"], sub["committed"]) == (3, 2)
    assert offsets(await talk.batch()) == [3, 4, 5]
    await talk.close()


async def test_subscribe_latest_sends_only_what_is_published_after(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="ticks")
    await talk.request("publish", topic="ticks", messages=[{"messageId": "old"}])
    sub = await talk.request("subscribe", topic="ticks", **{"from": "latest"})
    assert sub["nextOffset"] == 2
    await talk.request("publish", topic="ticks", messages=[{"messageId": "new"}])
    batch = await talk.batch()
    assert [m["messageId"] for m in batch["messages"]] == ["new"]
    await talk.close()


async def test_a_range_subscription_sends_the_range_and_ends_with_final(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="log")
    await talk.request(
        "publish", topic="log", messages=[{"messageId": str(i)} for i in range(1, 11)]
    )
    await talk.request("subscribe", topic="log", **{"from": {"start": 4, "end": 6}})
    batch = await talk.batch()
    assert offsets(batch) == [4, 5, 6]
    assert batch["final"] is True
    reply = await talk.request("unsubscribe", topic="log")
    assert code_of(reply) == "DG-6010"
    await talk.close()


async def test_the_next_batch_waits_for_the_configured_share_of_the_previous(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="q")
    await talk.request("publish", topic="q", messages=[{"messageId": str(i)} for i in range(30)])
    await talk.request("subscribe", topic="q", batchSize=10, **{"from": "beginning"})
    assert offsets(await talk.batch()) == list(range(1, 11))
    # 4 of 10 committed is below the share (0.5): no batch; the list round trip proves it.
    await talk.request("commit", topic="q", offset=4)
    await talk.request("list")
    assert talk.batches == []
    # 5 of 10: the next batch goes, only as large as keeps 10 uncommitted at most.
    await talk.request("commit", topic="q", offset=5)
    assert offsets(await talk.batch()) == list(range(11, 16))
    await talk.close()


async def test_publishing_a_repeated_message_id_returns_its_first_offset(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="once")
    first = await talk.request(
        "publish", topic="once", messages=[{"messageId": "a"}, {"messageId": "b"}]
    )
    again = await talk.request(
        "publish",
        topic="once",
        messages=[{"messageId": "b"}, {"messageId": "c"}, {"messageId": "c"}],
    )
    assert first["offsets"] == [1, 2]
    assert again["offsets"] == [2, 3, 3]
    assert await sync_to_async(Message.objects.count)() == 3
    await talk.close()


async def test_a_commit_that_moves_backwards_is_refused_with_its_code(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="c")
    await talk.request("publish", topic="c", messages=[{"messageId": str(i)} for i in range(5)])
    await talk.request("commit", topic="c", offset=4)
    reply = await talk.request("commit", topic="c", offset=2)
    assert code_of(reply) == "DG-6007"
    assert reply["fatal"] is False
    assert "committed offset 4" in reply["error"]
    same = await talk.request("commit", topic="c", offset=4)
    assert same["offset"] == 4
    beyond = await talk.request("commit", topic="c", offset=99)
    assert code_of(beyond) == "DG-6008"
    stored = await sync_to_async(ConsumerOffset.objects.get)()
    assert stored.committed == 4
    assert await sync_to_async(ErrorEvent.objects.filter(code="DG-6007").count)() == 1
    await talk.close()


@pytest.mark.parametrize(
    ("message_type", "body", "code"),
    [
        ("subscribe", {"topic": "missing"}, "DG-6002"),
        ("publish", {"topic": "missing", "messages": [{"messageId": "x"}]}, "DG-6002"),
        ("commit", {"topic": "missing", "offset": 1}, "DG-6002"),
        ("delete", {"topic": "missing"}, "DG-6002"),
        ("unsubscribe", {"topic": "missing"}, "DG-6010"),
        ("subscribe", {"topic": "bad name!"}, "DG-2004"),
        ("subscribe", {"topic": "t", "from": "yesterday"}, "DG-2004"),
        ("subscribe", {"topic": "t", "from": {"start": 0}}, "DG-2004"),
        ("subscribe", {"topic": "t", "batchSize": 0}, "DG-2004"),
        ("publish", {"topic": "t", "messages": []}, "DG-2004"),
        ("publish", {"topic": "t", "messages": [{"payload": 1}]}, "DG-2004"),
        ("commit", {"topic": "t", "offset": "3"}, "DG-2004"),
        ("create", {"topic": "t", "scope": "galactic"}, "DG-2004"),
        ("nonsense", {}, "DG-2003"),
    ],
)
async def test_bad_requests_get_a_non_fatal_error_and_change_nothing(
    tokens: Any, message_type: str, body: dict[str, Any], code: str
) -> None:
    talk = await connected(tokens["alice"])
    reply = await talk.request(message_type, **body)
    assert code_of(reply) == code
    assert reply["fatal"] is False
    assert reply["error"].startswith(code)
    assert (await talk.request("list"))["topics"] == []  # still usable
    await talk.close()


async def test_a_frame_that_is_not_json_after_connect_is_not_fatal(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.send_raw("{not json")
    assert code_of(await talk.next()) == "DG-2001"
    await talk.send_raw(json.dumps({"no": "header"}))
    assert code_of(await talk.next()) == "DG-2002"
    assert (await talk.request("list"))["topics"] == []
    await talk.close()


async def test_a_frame_that_is_not_json_before_connect_closes_4400(tokens: Any) -> None:
    talk = Talk()
    await talk.open()
    await talk.send_raw("hello")
    error = await talk.next()
    assert code_of(error) == "DG-2001"
    assert error["fatal"] is True
    assert await talk.next() == {"close": 4400}


async def test_anything_but_connect_first_closes_4409(tokens: Any) -> None:
    talk = Talk()
    await talk.open()
    await talk.send("list")
    assert code_of(await talk.next()) == "DG-2006"
    assert await talk.next() == {"close": 4409}


async def test_a_second_connect_closes_4409(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.send("connect", authToken=tokens["alice"], device="phone")
    assert code_of(await talk.next()) == "DG-2006"
    assert await talk.next() == {"close": 4409}


async def test_a_header_naming_another_user_closes_4409(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    talk.user_name = "bob"
    await talk.send("list")
    assert code_of(await talk.next()) == "DG-2005"
    assert await talk.next() == {"close": 4409}


async def test_subscribing_twice_to_one_topic_is_refused(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="t")
    await talk.request("subscribe", topic="t")
    assert code_of(await talk.request("subscribe", topic="t")) == "DG-6009"
    await talk.close()


async def test_creating_a_topic_that_exists_is_refused(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="t")
    assert code_of(await talk.request("create", topic="t")) == "DG-6003"
    assert code_of(await talk.request("create", topic="t", scope="local")) == "DG-6003"
    await talk.close()


async def test_a_local_topic_is_invisible_to_other_users(tokens: Any) -> None:
    alice = await connected(tokens["alice"])
    await alice.request("create", topic="diary", scope="local")
    await alice.request("publish", topic="diary", messages=[{"messageId": "1"}])
    bob = await connected(tokens["bob"])
    root = await connected(tokens["root"])
    assert (await bob.request("list"))["topics"] == []
    assert (await root.request("list"))["topics"] == []
    for talk in (bob, root):
        assert code_of(await talk.request("subscribe", topic="diary")) == "DG-6002"
        assert code_of(await talk.request("delete", topic="diary")) == "DG-6002"
        reply = await talk.request("publish", topic="diary", messages=[{"messageId": "2"}])
        assert code_of(reply) == "DG-6002"
    # Bob may have a local topic of the same name: it is his own.
    created = await bob.request("create", topic="diary", scope="local")
    assert created["topic"]["owner"] == "bob"
    assert (await alice.request("list"))["topics"][0]["messageCount"] == 1
    for talk in (alice, bob, root):
        await talk.close()


async def test_only_the_owner_or_a_tenant_admin_may_delete_a_topic(tokens: Any) -> None:
    alice = await connected(tokens["alice"])
    await alice.request("create", topic="shared")
    await alice.request("create", topic="other")
    bob = await connected(tokens["bob"])
    rita = await connected(tokens["rita"])
    assert code_of(await bob.request("delete", topic="shared")) == "DG-6005"
    assert code_of(await rita.request("delete", topic="shared")) == "DG-6005"
    root = await connected(tokens["root"])
    assert (await root.request("delete", topic="shared"))["topic"] == "shared"
    assert (await alice.request("delete", topic="other"))["topic"] == "other"
    for talk in (alice, bob, rita, root):
        await talk.close()


async def test_a_reader_may_subscribe_but_not_create_or_publish(tokens: Any) -> None:
    alice = await connected(tokens["alice"])
    await alice.request("create", topic="news")
    await alice.request("publish", topic="news", messages=[{"messageId": "1", "payload": "hi"}])
    rita = await connected(tokens["rita"])
    assert code_of(await rita.request("create", topic="mine")) == "DG-6004"
    reply = await rita.request("publish", topic="news", messages=[{"messageId": "2"}])
    assert code_of(reply) == "DG-6006"
    await rita.request("subscribe", topic="news", **{"from": "beginning"})
    assert [m["payload"] for m in (await rita.batch())["messages"]] == ["hi"]
    assert (await rita.request("commit", topic="news", offset=1))["offset"] == 1
    await alice.close()
    await rita.close()


async def test_a_subscriber_of_a_deleted_topic_is_told_and_the_subscription_ends(
    tokens: Any,
) -> None:
    alice = await connected(tokens["alice"])
    await alice.request("create", topic="gone")
    bob = await connected(tokens["bob"])
    await bob.request("subscribe", topic="gone")
    await alice.request("delete", topic="gone")
    error = await bob.next()
    assert code_of(error) == "DG-6002"
    assert error["fatal"] is False
    assert code_of(await bob.request("unsubscribe", topic="gone")) == "DG-6010"
    await alice.close()
    await bob.close()


async def test_publish_beyond_the_limit_is_refused_whole(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.request("create", topic="big")
    reply = await talk.request(
        "publish", topic="big", messages=[{"messageId": str(i)} for i in range(1001)]
    )
    assert code_of(reply) == "DG-2004"
    assert await sync_to_async(Message.objects.count)() == 0
    await talk.close()


async def test_disconnect_closes_normally(tokens: Any) -> None:
    talk = await connected(tokens["alice"])
    await talk.send("disconnect")
    assert await talk.next() == {"close": 1000}


async def test_a_socket_without_connect_is_closed_4408(tokens: Any, settings: Any) -> None:
    settings.DATAGATE = dict(settings.DATAGATE, CONNECT_TIMEOUT=0.2)
    talk = Talk()
    await talk.open()
    assert code_of(await talk.next()) == "DG-2008"
    assert await talk.next() == {"close": 4408}


async def test_a_frame_over_the_limit_closes_1009(tokens: Any, settings: Any) -> None:
    settings.DATAGATE = dict(settings.DATAGATE, MAX_FRAME_BYTES=1000)
    talk = await connected(tokens["alice"])
    await talk.send("publish", topic="t", messages=[{"messageId": "x", "payload": "y" * 2000}])
    assert code_of(await talk.next()) == "DG-2007"
    assert await talk.next() == {"close": 1009}


async def test_a_frame_without_a_header_before_connect_closes_4409(tokens: Any) -> None:
    talk = Talk()
    await talk.open()
    await talk.send_raw('{"no": "header"}')
    error = await talk.next()
    assert code_of(error) == "DG-2002"
    assert error["fatal"] is True
    assert await talk.next() == {"close": 4409}
