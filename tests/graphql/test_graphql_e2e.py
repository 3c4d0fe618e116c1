"""GraphQL end to end on a real daphne, with a GraphQL client library (gql): queries and
mutations over HTTP (httpx), subscriptions over `graphql-transport-ws` (websockets). A
subscription sees live the same changes a sync replica sees, through the same key rules and
views; topics' subscriptions see what is published."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport as GraphQLWebsockets
from websockets.typing import Subprotocol

from accounts.access import System
from accounts.services import key_rule_add
from replication import data_views
from replication.services.documents import document_put
from replication.services.engine import collection_get_or_create
from tests.support.fast_accounts import fast_cli_application, person
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SYSTEM = System("test")
TIMEOUT = 20.0


@pytest.fixture
def token(tenant: Any, issue_token: Any) -> str:
    tasks = collection_get_or_create(tenant=tenant, name="tasks")[0]
    for doc_id, body in {
        "t1": {"status": "open", "owner": "rita", "title": "one"},
        "t2": {"status": "done", "owner": "rita", "title": "two"},
        "t3": {"status": "open", "owner": "wendy", "title": "three"},
    }.items():
        document_put(actor=SYSTEM, collection_id=tasks.pk, doc_id=doc_id, body=body, origin="t")
    key_rule_add(
        tenant=tenant, collection_name="tasks", pattern="secret-*", effect="deny", actions=["read"]
    )
    data_views.view_create(
        actor=SYSTEM,
        tenant=tenant,
        collection_name="tasks",
        name="open-tasks",
        selector={"status": "open", "owner": "{username}"},
    )
    fast_cli_application()
    person("wendy", "acme", "writer")
    return str(issue_token(person("rita", "acme", "writer"), "read write topics"))


def http_client(server: DaphneServer, token: str) -> Client:
    transport = HTTPXAsyncTransport(
        url=f"{server.http_url}/graphql/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )
    return Client(transport=transport, execute_timeout=TIMEOUT)


def ws_client(server: DaphneServer, token: str) -> Client:
    transport = GraphQLWebsockets(
        url=f"{server.ws_url}/graphql/",
        init_payload={"Authorization": f"Bearer {token}"},
        subprotocols=[GraphQLWebsockets.GRAPHQLWS_SUBPROTOCOL],
    )
    return Client(transport=transport, execute_timeout=TIMEOUT)


async def run(session: Any, query: str, **variables: Any) -> Any:
    return await session.execute(GraphQLRequest(query, variable_values=variables))


PUT = """mutation($id: String!, $body: JSON!) {
  putDocument(tenant: "acme", collection: "tasks", id: $id, body: $body) { revision seq } }"""
DELETE = """mutation($id: String!) {
  deleteDocument(tenant: "acme", collection: "tasks", id: $id) }"""
HEAD = """query { collections(tenant: "acme") { name markers { seq } } }"""
CHANGES_SUB = """subscription($view: String, $after: Long) {
  documentChanges(tenant: "acme", collection: "tasks", view: $view, after: $after) {
    id revision deleted body seq } }"""


async def collect(session: Any, query: str, sink: list[dict[str, Any]], **variables: Any) -> None:
    request = GraphQLRequest(query, variable_values=variables)
    async for result in session.subscribe(request):
        sink.append(next(iter(result.values())))


async def until(condition: Any, what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.05)
    assert condition(), what


@contextlib.asynccontextmanager
async def subscribed(
    server: DaphneServer, token: str, query: str, sink: list[dict[str, Any]], **variables: Any
) -> AsyncIterator[None]:
    async with ws_client(server, token) as session:
        task = asyncio.create_task(collect(session, query, sink, **variables))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_subscription_sees_live_what_a_sync_replica_sees(
    daphne: DaphneServer, token: str
) -> None:
    replica = WireReplica(
        transport=await WebsocketsTransport.open(f"{daphne.ws_url}/ws/datagate/acme/tasks/"),
        token=token,
        tenant="acme",
        collection="tasks",
        origin="phone",
    )
    await replica.sync()
    seen: list[dict[str, Any]] = []
    async with http_client(daphne, token) as http:
        head = await run(http, HEAD)
        start = next(c["markers"]["seq"] for c in head["collections"] if c["name"] == "tasks")
        async with subscribed(daphne, token, CHANGES_SUB, seen, after=start):
            await run(http, PUT, id="t4", body={"status": "open", "owner": "rita"})
            await run(http, PUT, id="secret-1", body={"status": "open", "owner": "rita"})
            await run(http, DELETE, id="t2")
            replica.put("from-phone", title="typed offline")
            await replica.send_feed()
            await until(lambda: any(d["id"] == "from-phone" for d in seen), "the replica's push")
            last = max(d["seq"] for d in seen)
            await replica.feed_until(last)
    assert [d["id"] for d in seen] == ["t4", "t2", "from-phone"]  # secret-1: a key rule hides it
    assert [d["seq"] for d in seen] == sorted(d["seq"] for d in seen)
    for change in seen:
        if change["deleted"]:
            assert change["id"] in replica.tombstones
            assert change["id"] not in replica.documents
        else:
            held = replica.documents[change["id"]]
            assert held["_revision"] == change["revision"]
            assert {k: v for k, v in held.items() if not k.startswith("_")} == change["body"]
    assert "secret-1" not in replica.documents
    assert (
        replica.markers["collectionMarker"] == last + 0
        or replica.markers["collectionMarker"] >= last
    )
    assert "Traceback" not in daphne.log()


async def test_a_view_subscription_gains_and_loses_documents_like_a_view_replica(
    daphne: DaphneServer, token: str
) -> None:
    url = f"{daphne.ws_url}/ws/datagate/acme/tasks/views/open-tasks/"
    replica = WireReplica(
        transport=await WebsocketsTransport.open(url),
        token=token,
        tenant="acme",
        collection="tasks",
        origin="view-phone",
    )
    await replica.sync()
    assert set(replica.documents) == {"t1"}
    seen: list[dict[str, Any]] = []
    async with http_client(daphne, token) as http:
        page = await run(
            http,
            'query { documents(tenant: "acme", collection: "tasks", view: "open-tasks") '
            "{ documents { id revision } endCursor } }",
        )
        held = {d["id"]: d["revision"] for d in page["documents"]["documents"]}
        after = int(page["documents"]["endCursor"])
        head = await run(http, HEAD)
        start = next(c["markers"]["seq"] for c in head["collections"] if c["name"] == "tasks")
        assert after <= start
        async with subscribed(daphne, token, CHANGES_SUB, seen, view="open-tasks", after=start):
            await run(http, PUT, id="t1", body={"status": "done", "owner": "rita"})  # leaves
            await run(http, PUT, id="t2", body={"status": "open", "owner": "rita"})  # enters
            await run(http, PUT, id="t5", body={"status": "open", "owner": "wendy"})  # not hers
            await run(http, PUT, id="t6", body={"status": "open", "owner": "rita"})  # enters
            await until(lambda: any(d["id"] == "t6" for d in seen), "t6 entering the view")
            await replica.feed_until(max(d["seq"] for d in seen))
    for change in seen:
        if change["deleted"]:
            held.pop(change["id"], None)
        else:
            held[change["id"]] = change["revision"]
    assert [(d["id"], d["deleted"]) for d in seen] == [
        ("t1", True),
        ("t2", False),
        ("t5", True),  # a change outside the view is a removal: the server cannot know
        ("t6", False),
    ]
    assert held == {k: v["_revision"] for k, v in replica.documents.items()}
    assert set(held) == {"t2", "t6"}


@pytest.fixture
def news(tenant: Any) -> str:
    from topics.services import topic_create

    topic_create(tenant=tenant, name="news", scope="global", owner_id=None)
    return "news"


async def test_topic_messages_arrive_on_a_subscription(
    daphne: DaphneServer, token: str, news: str
) -> None:
    seen: list[dict[str, Any]] = []
    sub = """subscription { topicMessages(tenant: "acme", topic: "news", startFrom: "beginning")
      { offset messageId payload } }"""
    publish = """mutation($id: String!, $n: JSON) {
      publish(tenant: "acme", topic: "news", messages: [{messageId: $id, payload: $n}]) }"""
    async with http_client(daphne, token) as http:
        await run(http, publish, id="m1", n=1)
        async with subscribed(daphne, token, sub, seen):
            await until(lambda: len(seen) == 1, "the message published before")
            await run(http, publish, id="m2", n={"two": 2})
            await until(lambda: len(seen) == 2, "the message published live")
        committed = await run(
            http, 'mutation { commitOffset(tenant: "acme", topic: "news", offset: 2) }'
        )
    assert [(m["offset"], m["payload"]) for m in seen] == [(1, 1), (2, {"two": 2})]
    assert committed == {"commitOffset": 2}


async def test_errors_over_the_wire_carry_dg_codes(daphne: DaphneServer, token: str) -> None:
    async with http_client(daphne, token) as http:
        with pytest.raises(TransportQueryError) as conflict:
            await run(
                http,
                'mutation { putDocument(tenant: "acme", collection: "tasks", id: "t1", '
                "body: {}, expectedRevision: 7) { revision } }",
            )
        assert conflict.value.errors
        assert conflict.value.errors[0]["extensions"]["code"] == "DG-4009"
    async with http_client(daphne, "not-a-token") as http:
        with pytest.raises(TransportQueryError) as refused:
            await run(http, HEAD)
        assert refused.value.errors
        assert refused.value.errors[0]["extensions"]["code"] == "DG-1001"
    # A websocket with a bad token is closed before connection_ack, with DG-1001's close code.
    async with websockets.connect(
        f"{daphne.ws_url}/graphql/", subprotocols=[Subprotocol("graphql-transport-ws")]
    ) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": {"token": "nope"}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
