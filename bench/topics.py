"""Topics: messages per second published, and consumed with commits.

A publisher connects to `/ws/topics/{tenant}/`, creates a topic and publishes `topic_messages`
messages (~100-byte payloads) in publishes of `PUBLISH_BATCH`, with `WINDOW` publishes unacked.
Then a consumer subscribes from the beginning with `batchSize` `CONSUME_BATCH` and commits the
last offset of every batch as soon as it arrives; the time runs until the last message is
in. Last, publisher and consumer run at once on a fresh topic (the live case).
Baselines, same run: the same publishes straight through `topics.services.messages_publish`,
and the same reads through `topics.selectors.messages_read` with an `offset_commit` per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import websockets

from bench.harness import TENANT, PassContext, daphne, profiled, ratio, running
from bench.wire import open_socket

NAME = "topics"
PREFIX = "datagate.topic."
PUBLISH_BATCH = 100
CONSUME_BATCH = 500
WINDOW = 2
PAYLOAD = {"kind": "reading", "text": "x" * 60}


def topics_route_missing() -> str | None:
    from topics.routing import websocket_urlpatterns

    if not websocket_urlpatterns:
        return "this branch has no topics websocket route yet (issue 6)"
    return None


class TopicClient:
    def __init__(self, socket: Any, device: str) -> None:
        self.socket = socket
        self.device = device
        self.transaction_id = str(uuid.uuid4())
        self.user_name: str | None = None
        self.counter = 0

    @classmethod
    async def open(cls, port: int, token: str, device: str) -> TopicClient:
        client = cls(await open_socket(f"ws://127.0.0.1:{port}/ws/topics/{TENANT}/"), device)
        await client.send("connect", authToken=token, device=device)
        ack = await client.expect("connect.ack")
        client.user_name = ack["header"]["userName"]
        return client

    async def send(self, kind: str, **body: Any) -> str:
        self.counter += 1
        header = {
            "id": f"{self.device}-{self.counter}",
            "messageType": PREFIX + kind,
            "transactionId": self.transaction_id,
            "correlationId": None,
            "tenant": TENANT,
            "userName": self.user_name,
            "origin": self.device,
            "timestamp": time.time_ns() // 1_000_000,
        }
        await self.socket.send(json.dumps({"header": header, **body}, separators=(",", ":")))
        return str(header["id"])

    async def receive(self, timeout: float = 60) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        if message["header"]["messageType"] == PREFIX + "error":
            raise RuntimeError(f"topics error: {message.get('error')}")
        return message

    async def expect(self, kind: str) -> dict[str, Any]:
        message = await self.receive()
        if message["header"]["messageType"] != PREFIX + kind:
            raise RuntimeError(f"expected {kind}, got {message['header']['messageType']}")
        return message

    async def close(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(self.socket.close(), 10)


def _payloads(count: int, prefix: str) -> list[list[dict[str, Any]]]:
    batches = []
    for start in range(0, count, PUBLISH_BATCH):
        batches.append(
            [
                {"messageId": f"{prefix}-{i}", "payload": {**PAYLOAD, "n": i}}
                for i in range(start, min(count, start + PUBLISH_BATCH))
            ]
        )
    return batches


async def _publish(client: TopicClient, topic: str, count: int, prefix: str) -> float:
    batches = _payloads(count, prefix)
    start = time.perf_counter()
    in_flight, index = 0, 0
    while index < len(batches) or in_flight:
        while index < len(batches) and in_flight < WINDOW:
            await client.send("publish", topic=topic, messages=batches[index])
            index += 1
            in_flight += 1
        message = await client.receive()
        if message["header"]["messageType"] == PREFIX + "publish.ack":
            in_flight -= 1
    return time.perf_counter() - start


async def _consume(client: TopicClient, topic: str, count: int) -> float:
    """Subscribe from the beginning; commit each batch's last offset; until `count` arrived."""
    start = time.perf_counter()
    await client.send("subscribe", topic=topic, batchSize=CONSUME_BATCH, **{"from": "beginning"})
    received = 0
    while received < count:
        message = await client.receive()
        if message["header"]["messageType"] != PREFIX + "messages":
            continue
        batch = message["messages"]
        received += len(batch)
        if batch:
            await client.send("commit", topic=topic, offset=batch[-1]["offset"])
    return time.perf_counter() - start


async def _socket_run(ctx: PassContext, port: int) -> dict[str, Any]:
    count = ctx.sizes.topic_messages
    stamp = time.time_ns()
    topic = f"bench-{stamp}"
    publisher = await TopicClient.open(port, ctx.token, f"pub-{stamp}")
    consumer = await TopicClient.open(port, ctx.token, f"sub-{stamp}")
    try:
        await publisher.send("create", topic=topic, scope="global", pageSize=CONSUME_BATCH)
        await publisher.expect("create.ack")
        publish_seconds = await _publish(publisher, topic, count, f"m{stamp}")
        consume_seconds = await _consume(consumer, topic, count)
        live_topic = f"live-{stamp}"
        await publisher.send("create", topic=live_topic, scope="global", pageSize=CONSUME_BATCH)
        await publisher.expect("create.ack")
        live_consumer = await TopicClient.open(port, ctx.token, f"live-{stamp}")
        try:
            start = time.perf_counter()
            await asyncio.gather(
                _publish(publisher, live_topic, count, f"l{stamp}"),
                _consume(live_consumer, live_topic, count),
            )
            live_seconds = time.perf_counter() - start
        finally:
            await live_consumer.close()
    finally:
        await publisher.close()
        await consumer.close()
    return {
        "publish": {
            "messages": count,
            "seconds": round(publish_seconds, 3),
            "messages_per_s": round(count / publish_seconds),
        },
        "consume": {
            "messages": count,
            "seconds": round(consume_seconds, 3),
            "messages_per_s": round(count / consume_seconds),
        },
        "live": {
            "messages": count,
            "seconds": round(live_seconds, 3),
            "messages_per_s": round(count / live_seconds),
        },
    }


def direct_baseline(ctx: PassContext) -> dict[str, Any]:
    from accounts.models import Tenant
    from topics.selectors import messages_read
    from topics.services import Publication, messages_publish, offset_commit, topic_create

    count = ctx.sizes.topic_messages
    stamp = time.time_ns()
    tenant = Tenant.objects.get(slug=TENANT)
    topic = topic_create(
        tenant=tenant, name=f"direct-{stamp}", scope="global", owner_id=ctx.user_id
    )
    batches = _payloads(count, f"d{stamp}")
    # Warm up (first queries, statement caches) on another topic, as the server is warm.
    warm = topic_create(tenant=tenant, name=f"warm-{stamp}", scope="global", owner_id=ctx.user_id)
    messages_publish(
        topic_id=warm.pk,
        messages=[Publication(m["messageId"], m["payload"]) for m in batches[0]],
        publisher_id=ctx.user_id,
    )
    messages_read(topic_id=warm.pk, from_offset=1, limit=CONSUME_BATCH)
    start = time.perf_counter()
    for batch in batches:
        messages_publish(
            topic_id=topic.pk,
            messages=[Publication(m["messageId"], m["payload"]) for m in batch],
            publisher_id=ctx.user_id,
            device="direct",
        )
    publish_seconds = time.perf_counter() - start
    start = time.perf_counter()
    offset, read = 1, 0
    while read < count:
        page = messages_read(topic_id=topic.pk, from_offset=offset, limit=CONSUME_BATCH)
        if page is None or not page[0]:
            break
        rows = page[0]
        json.dumps([{"offset": m.offset, "payload": m.payload} for m in rows])
        read += len(rows)
        offset = rows[-1].offset + 1
        offset_commit(
            topic_id=topic.pk,
            topic_name=topic.name,
            user_id=ctx.user_id,
            device="direct",
            offset=rows[-1].offset,
        )
    read_seconds = time.perf_counter() - start
    return {
        "messages": count,
        "read": read,
        "publish_seconds": round(publish_seconds, 3),
        "publish_per_s": round(count / publish_seconds),
        "read_seconds": round(read_seconds, 3),
        "read_per_s": round(read / read_seconds) if read_seconds else None,
    }


def run(ctx: PassContext) -> dict[str, Any]:
    missing = topics_route_missing()
    if missing:
        return {"skipped": missing}
    baseline = direct_baseline(ctx)
    server = daphne(ctx, "topics")
    with running(server), profiled(ctx, server.process.pid, "topics", 6):
        result = asyncio.run(_socket_run(ctx, server.port))
    result["baseline"] = baseline
    result["publish"]["ratio_to_baseline"] = ratio(
        result["publish"]["messages_per_s"], baseline["publish_per_s"]
    )
    result["consume"]["ratio_to_baseline"] = ratio(
        result["consume"]["messages_per_s"], baseline["read_per_s"]
    )
    result["headline"] = (
        f"publish {result['publish']['messages_per_s']} msg/s "
        f"(direct {baseline['publish_per_s']}), consume+commit "
        f"{result['consume']['messages_per_s']} msg/s (direct {baseline['read_per_s']}), "
        f"live {result['live']['messages_per_s']} msg/s"
    )
    return result
