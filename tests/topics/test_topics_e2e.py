"""Topics end to end: a real daphne process and the SDK's topics client over real sockets."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets
from datagate_replica.topics import TopicError, TopicMessage, TopicsClient

from topics.models import ConsumerOffset, Message

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice_token(member: Any, issue_token: Any) -> str:
    return str(issue_token(member("alice", "writer"), "topics"))


def client(server: Any, token: str, device: str) -> TopicsClient:
    return TopicsClient(server.ws_url, tenant="acme", token=token, device=device)


async def take(subscription: Any, count: int, timeout: float = 30) -> list[TopicMessage]:
    got: list[TopicMessage] = []
    async with asyncio.timeout(timeout):
        async for message in subscription:
            got.append(message)
            if len(got) == count:
                break
    return got


def test_a_consumer_that_disconnects_before_committing_gets_those_messages_again(
    daphne: Any, alice_token: str
) -> None:
    async def scenario() -> None:
        async with client(daphne, alice_token, "publisher") as pub:
            await pub.create("jobs")
            assert await pub.publish("jobs", [{"n": n} for n in range(1, 7)]) == [1, 2, 3, 4, 5, 6]
        worker = await client(daphne, alice_token, "worker").connect()
        async with worker.subscribe("jobs") as subscription:
            got = await take(subscription, 6)
            assert [m.offset for m in got] == [1, 2, 3, 4, 5, 6]
            await got[2].commit()  # processed 1..3; 4..6 were received, not committed
        await worker.close()
        # The connection drops; the worker comes back from its committed offset.
        worker = await client(daphne, alice_token, "worker").connect()
        async with worker.subscribe("jobs", start="committed") as subscription:
            assert subscription.committed == 3
            again = await take(subscription, 3)
            assert [m.offset for m in again] == [4, 5, 6]
            assert [m.payload for m in again] == [{"n": 4}, {"n": 5}, {"n": 6}]
        await worker.close()

    asyncio.run(scenario())


def test_two_devices_of_one_user_keep_separate_offsets(daphne: Any, alice_token: str) -> None:
    async def scenario() -> None:
        async with client(daphne, alice_token, "phone") as phone:
            await phone.create("feed")
            await phone.publish("feed", list(range(8)))
            await phone.commit("feed", 5)
        async with client(daphne, alice_token, "laptop") as laptop:
            await laptop.commit("feed", 2)
        async with (
            client(daphne, alice_token, "phone") as phone,
            client(daphne, alice_token, "laptop") as laptop,
            phone.subscribe("feed") as on_phone,
            laptop.subscribe("feed") as on_laptop,
        ):
            assert [m.offset for m in await take(on_phone, 3)] == [6, 7, 8]
            assert [m.offset for m in await take(on_laptop, 6)] == [3, 4, 5, 6, 7, 8]

    asyncio.run(scenario())
    stored = dict(ConsumerOffset.objects.values_list("device", "committed"))
    assert stored == {"phone": 5, "laptop": 2}


def test_publishing_with_a_repeated_id_does_not_duplicate(daphne: Any, alice_token: str) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]

    async def scenario() -> None:
        async with client(daphne, alice_token, "a") as first:
            await first.create("orders")
            assert await first.publish("orders", ["x", "y", "z"], message_ids=ids) == [1, 2, 3]
        # A retry after a lost publish.ack, from a new connection, with one new message.
        async with client(daphne, alice_token, "a") as retry:
            offsets = await retry.publish("orders", ["y", "z", "w"], message_ids=[*ids[1:], "new"])
            assert offsets == [2, 3, 4]
            (orders,) = await retry.list_topics()
            assert (orders["messageCount"], orders["lastOffset"]) == (4, 4)

    asyncio.run(scenario())
    assert Message.objects.count() == 4


def test_live_delivery_reaches_a_subscriber_on_another_connection(
    daphne: Any, alice_token: str
) -> None:
    async def scenario() -> None:
        async with (
            client(daphne, alice_token, "pub") as pub,
            client(daphne, alice_token, "sub") as sub,
        ):
            await pub.create("chat")
            async with sub.subscribe("chat", start="latest", auto_commit=True) as subscription:
                for n in range(5):
                    await pub.publish("chat", [f"hello {n}"])
                got = await take(subscription, 5)
                assert [m.payload for m in got] == [f"hello {n}" for n in range(5)]

    asyncio.run(scenario())


def test_a_slow_consumer_is_sent_one_window_however_much_is_published(
    daphne: Any, alice_token: str
) -> None:
    """A subscriber that never commits holds at most one batch window: the server reads no
    more for it, so its memory does not grow with what publishers send."""

    async def scenario() -> None:
        async with client(daphne, alice_token, "pub") as pub:
            await pub.create("firehose", page_size=10)
            for start in range(0, 500, 100):
                await pub.publish("firehose", list(range(start, start + 100)))
        url = f"{daphne.ws_url}/ws/topics/acme/"
        received: list[int] = []
        async with websockets.connect(url) as raw:
            talk = RawTalk(raw)
            ack = await talk.request("connect", authToken=alice_token, device="slow")
            talk.user_name = ack["header"]["userName"]
            await talk.request("subscribe", topic="firehose", **{"from": "beginning"})
            async with client(daphne, alice_token, "pub") as pub:
                for start in range(500, 1000, 100):
                    await pub.publish("firehose", list(range(start, start + 100)))
            # Round trips after the publishes: any further batch would have come before.
            for _ in range(3):
                await talk.request("list")
            received = [m["offset"] for b in talk.batches for m in b["messages"]]
            assert received == list(range(1, 11))
            # Committing half the window releases the next half, and no more.
            await talk.request("commit", topic="firehose", offset=5)
            await talk.request("list")
            while len(talk.batches) < 2:
                await talk.next_frame()
            assert [m["offset"] for m in talk.batches[1]["messages"]] == [11, 12, 13, 14, 15]

    asyncio.run(scenario())


def test_a_bad_token_is_refused_as_for_sync(daphne: Any, alice_token: str) -> None:
    async def scenario() -> None:
        with pytest.raises(TopicError) as refused:
            async with client(daphne, "not-a-token", "x"):
                pass
        assert refused.value.code == "DG-1001"
        assert "failed to validate token" in refused.value.text
        async with websockets.connect(f"{daphne.ws_url}/ws/topics/acme/") as raw:
            talk = RawTalk(raw)
            error = await talk.request("connect", authToken="nope", device="x")
            assert error["code"] == "DG-1001"
            assert error["fatal"] is True
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await raw.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401

    asyncio.run(scenario())


def test_a_server_shutdown_sends_disconnect_then_closes_1001(daphne: Any, alice_token: str) -> None:
    async def scenario() -> None:
        async with websockets.connect(f"{daphne.ws_url}/ws/topics/acme/") as raw:
            talk = RawTalk(raw)
            await talk.request("connect", authToken=alice_token, device="x")
            await asyncio.get_running_loop().run_in_executor(None, daphne.stop)
            frame = await talk.next_frame()
            assert frame["header"]["messageType"] == "datagate.topic.disconnect"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await raw.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001

    asyncio.run(scenario())


class RawTalk:
    """A bare websocket conversation, for checks the SDK hides (batches, close codes)."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.user_name: str | None = None
        self.transaction_id = str(uuid.uuid4())
        self.batches: list[dict[str, Any]] = []

    async def next_frame(self) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.socket.recv(), 30))
        if frame["header"]["messageType"] == "datagate.topic.messages":
            self.batches.append(frame)
        return dict(frame)

    async def request(self, message_type: str, **body: Any) -> dict[str, Any]:
        message_id = str(uuid.uuid4())
        header = {
            "id": message_id,
            "messageType": "datagate.topic." + message_type,
            "transactionId": self.transaction_id,
            "tenant": "acme",
            "userName": self.user_name,
            "origin": "raw",
        }
        await self.socket.send(json.dumps({"header": header, **body}))
        while True:
            frame = await self.next_frame()
            if frame["header"].get("correlationId") == message_id:
                return frame
