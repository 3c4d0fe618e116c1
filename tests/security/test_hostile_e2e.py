"""The hostile-input suite: generated bad input against a real daphne, on every interface.

Hypothesis builds hostile documents, ids, numbers and frames (lone surrogates and other Unicode
edge cases, deep nesting, NaN/Infinity and huge numbers, wrong types, odd ids, truncated and
oversized frames). Each goes to the websocket before and after Connect, to the HTTP API and
to topics publish over the websocket of a real daphne, and to the console form (in process,
Django's test client, logged in as an admin). After each one: no 5xx, no close
1011 or 4500, the server still answers, and another user's pull of the collection returns
every legitimate document unchanged.

About a minute by default; `DATAGATE_HOSTILE_EXAMPLES=N` runs N examples (default 40).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import ERROR, Closed, WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("DATAGATE_HOSTILE_EXAMPLES", "40"))
FRAME_LIMIT = 65536
BAD_CLOSES = {1011, 4500, 1006}
T0 = 1_700_000_000_000
TOPIC_PREFIX = "datagate.topic."

# --- what hostile input looks like ------------------------------------------------------------

ODD_TEXT = st.text(
    alphabet=st.sampled_from([*"\ud800\udfff\x00\x01\x7f\x85\u2028\ufeff\U0001f600", *'a/\\"é']),
    max_size=8,
)
NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 400, "-0"])
# JSON texts (a document's field value), some of them not JSON the server can decode.
VALUES = st.one_of(
    ODD_TEXT.map(json.dumps),
    NUMBERS,
    st.integers(min_value=2, max_value=3000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=2, max_value=200).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(['"ok"', "true", "null", "[]", "{}", "12", "1.5"]),
)
IDS = st.one_of(
    ODD_TEXT.filter(bool),
    st.sampled_from(["", "x" * 129, "ok-id", "a/b", "user-kw/x"]),
)
ID_JSON = st.one_of(IDS.map(json.dumps), st.sampled_from(["1", "null", "[]", '{"a":1}', "true"]))


@st.composite
def hostile_doc(draw: Any) -> str:
    """The JSON text of one pushed document: odd id, odd field name and value, odd meta."""
    revision = draw(st.sampled_from(["1", "0", "-1", '"1"', "1.5", "null", str(2**70)]))
    modified = draw(st.sampled_from([str(T0), "-5", '"x"', "1e20", str(2**64)]))
    name = json.dumps(draw(ODD_TEXT.filter(bool)))
    return (
        f'{{"_id":{draw(ID_JSON)},"_revision":{revision},"_modified":{modified},'
        f"{name}:{draw(VALUES)}}}"
    )


@st.composite
def case(draw: Any) -> dict[str, Any]:
    where = draw(st.sampled_from(["ws-before", "ws-after", "http", "topics", "console"]))
    docs = draw(st.lists(hostile_doc(), min_size=1, max_size=3))
    cut = draw(st.floats(min_value=0.05, max_value=0.95))
    shape = draw(st.sampled_from(["push", "push", "push", "truncated", "oversized", "raw"]))
    return {
        "where": where,
        "docs": docs,
        "shape": shape,
        "cut": cut,
        "id": draw(IDS),
        "value": draw(VALUES),
    }


def repro(where: str, value: str, *, doc_id: str = "user-kw/x", shape: str = "push") -> Any:
    """One fixed case: `value` as a field of a document `doc_id` (ids are JSON-escaped)."""
    doc = f'{{"_id":"{doc_id}","_revision":1,"_modified":{T0},"t":{value}}}'
    raw = value if shape == "raw" else doc
    return {"where": where, "docs": [raw], "shape": shape, "cut": 0.5, "id": "x", "value": value}


# --- talking to the server --------------------------------------------------------------------


def header(message_type: str, **extra: Any) -> str:
    value = {
        "id": str(uuid.uuid4()),
        "messageType": message_type,
        "tenant": "acme",
        "collection": "notes",
        "origin": "hostile",
        "timestamp": T0,
        **extra,
    }
    return json.dumps(value)


def push_frame(head: str, docs: list[str], shape: str, cut: float) -> str:
    feed = '{"changeSet":[' + ",".join([*docs, '{"_id":"fine","_revision":1,"_modified":1}'])
    frame = '{"header":' + head + ',"feed":' + feed + "]}}"
    if shape == "truncated":
        return frame[: max(1, int(len(frame) * cut))]
    if shape == "oversized":
        return frame[:-2] + ',"pad":"' + "x" * FRAME_LIMIT + '"}}'
    if shape == "raw":
        return docs[0]
    return frame


def http(
    server: DaphneServer, method: str, path: str, token: str, body: bytes | None = None
) -> Any:
    request = urllib.request.Request(
        server.http_url + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


OUTCOMES: list[str] = []


async def ws_case(server: DaphneServer, token: str, one: dict[str, Any], *, connect: bool) -> None:
    transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/")
    replica = WireReplica(transport=transport, token=token, tenant="acme", collection="notes")
    try:
        if connect:
            await replica.connect()
        head = json.dumps(replica.header("no2.sync.batch.start"))
        await transport.send(push_frame(head, one["docs"], one["shape"], one["cut"]))
        close_code: int | None = None
        try:
            reply = await replica.receive(timeout=20)
            OUTCOMES.append(str(reply.get("code") or reply["header"]["messageType"]))
            if reply["header"]["messageType"] == "no2.sync.batch.ack":
                OUTCOMES.extend(r["code"] for r in reply["receipt"]["rejected"])
                for rejected in reply["receipt"]["rejected"]:
                    assert rejected["code"].startswith("DG-"), rejected
            elif reply["header"]["messageType"] == ERROR:
                assert reply["code"] not in ("DG-5003",), reply
            if connect and not reply.get("fatal"):
                # The session goes on: a batch.end is answered.
                await replica.send(
                    replica.message(
                        "no2.sync.batch.end", startMarkers=None, endMarkers=None, batchSize=10
                    )
                )
                code = await replica.expect_close(timeout=3)
                raise AssertionError(f"closed {code} after a batch.end")
        except Closed as closed:
            OUTCOMES.append(f"close {closed.code}")
            close_code = closed.code
        except TimeoutError:
            pass  # still open and quiet: fine
        assert close_code not in BAD_CLOSES, close_code
    finally:
        await transport.close()


async def topics_case(server: DaphneServer, token: str, payload: str, message_id: str) -> None:
    transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/topics/acme/")
    try:
        connect = header(TOPIC_PREFIX + "connect")
        await transport.send(f'{{"header":{connect},"authToken":"{token}","device":"d"}}')
        ack = json.loads(await transport.recv(20))
        assert ack["header"]["messageType"] == TOPIC_PREFIX + "connect.ack", ack
        publish = header(TOPIC_PREFIX + "publish")
        items = f'[{{"messageId":{json.dumps(message_id)},"payload":{payload}}}]'
        await transport.send(f'{{"header":{publish},"topic":"news","messages":{items}}}')
        close_code: int | None = None
        try:
            reply = json.loads(await transport.recv(20))
            if reply["header"]["messageType"] == TOPIC_PREFIX + "error":
                assert reply["code"] != "DG-5003", reply
        except Closed as closed:
            close_code = closed.code
        assert close_code not in BAD_CLOSES, close_code
    finally:
        await transport.close()


# --- the suite --------------------------------------------------------------------------------


def test_hostile_input_never_takes_data_away(
    tmp_path: Any, collection: Any, member: Any, issue_token: Any, settings_fast: None
) -> None:
    from django.test import Client

    from accounts.access import System
    from replication.services.documents import document_put
    from topics.services import topic_create

    writer = member("wendy", "writer")
    reader = member("rita", "reader")
    admin = member("ada", "admin")
    writer_token = issue_token(writer, "read write topics")
    reader_token = issue_token(reader, "read write")
    legit: dict[str, dict[str, Any]] = {
        "plain": {"t": "hello"},
        "emoji": {"t": "\U0001f600 caf\u00e9", "n": 2**80, "f": -0.5},
        "nested": {"a": {"b": [1, {"c": None}]}},
    }
    for doc_id, body in legit.items():
        document_put(
            actor=System("test"), collection_id=collection.pk, doc_id=doc_id, body=body, origin="s"
        )
    topic_create(tenant=collection.tenant, name="news", scope="global", owner_id=None)
    console = Client()
    console.force_login(admin)
    server = DaphneServer.start(
        tmp_path=tmp_path, extra_env={"DATAGATE_MAX_FRAME_BYTES": str(FRAME_LIMIT)}
    )
    documents = "/api/v1/tenants/acme/collections/notes/documents/"

    def still_whole() -> None:
        status, body = http(server, "GET", documents + "?limit=1000", reader_token)
        assert status == 200, body
        served = {d.pop("_id"): d for d in json.loads(body)["documents"]}
        for doc_id, fields in legit.items():
            got = {k: v for k, v in served[doc_id].items() if not k.startswith("_")}
            assert got == fields, (doc_id, got)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(one=case())
    # Issue 14's reproductions, always run: a lone surrogate in a value and in `_id`, and
    # 10,000-deep nesting, on the websocket after and before Connect and over HTTP.
    @example(one=repro("ws-after", '{"t":"\\ud800"}'))
    @example(one=repro("ws-after", "[" * 10_000 + "]" * 10_000, shape="raw"))
    @example(one=repro("ws-after", '"x"', doc_id="user-kw/\\ud800"))
    @example(one=repro("ws-before", "[" * 10_000 + "]" * 10_000, shape="raw"))
    @example(one=repro("http", '"\\ud800"'))
    @example(one=repro("http", "[" * 10_000 + "]" * 10_000))
    @example(one={**repro("http", "1"), "id": "nul\x00id"})
    def run(one: dict[str, Any]) -> None:
        where = one["where"]
        if where in ("ws-before", "ws-after"):
            asyncio.run(ws_case(server, writer_token, one, connect=where == "ws-after"))
        elif where == "http":
            path = documents + urllib.parse.quote(one["id"].encode("utf-8", "surrogatepass"))
            body = ('{"f":' + one["value"] + "}").encode("utf-8", "surrogatepass")
            status, answer = http(server, "PUT", path, writer_token, body)
            assert status < 500, answer
            if status >= 400:
                assert json.loads(answer)["error"]["code"].startswith("DG-")
            # The same odd id read, deleted, and as a paging position.
            after = documents + "?after=" + path.rsplit("/", 1)[1]
            for method, url in (("GET", path), ("DELETE", path), ("GET", after)):
                status, answer = http(server, method, url, writer_token)
                assert status < 500, (method, url, answer)
        elif where == "topics":
            asyncio.run(topics_case(server, writer_token, one["value"], one["id"] or "m"))
        else:
            # A browser sends a lone surrogate in a form field as U+FFFD; the JSON may escape it.
            doc_id = one["id"].encode("utf-8", "replace").decode("utf-8")
            response = console.post(
                "/console/t/acme/c/notes/documents/new/",
                {"doc_id": doc_id, "body": '{"f":' + one["value"] + "}"},
            )
            assert response.status_code < 500
        still_whole()

    try:
        run()
        still_whole()
        # A reader's websocket pull still gets every legitimate document, unchanged.

        async def pull() -> dict[str, Any]:
            transport = await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/")
            replica = WireReplica(
                transport=transport, token=reader_token, tenant="acme", collection="notes"
            )
            await replica.connect()
            await replica.pull()
            await transport.close()
            return replica.documents

        pulled = asyncio.run(pull())
        # The fixed cases reached the door and the decoder, not only the framing.
        assert {"no2.sync.batch.ack", "DG-4010", "DG-4002", "DG-2009"} <= set(OUTCOMES), sorted(
            set(OUTCOMES)
        )
        for doc_id, fields in legit.items():
            assert {k: v for k, v in pulled[doc_id].items() if not k.startswith("_")} == fields
    finally:
        server.stop()


@pytest.fixture
def settings_fast(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.mark.skipif(
    os.environ.get("DATAGATE_TEST_BACKEND") == "postgres",
    reason=(
        "PostgreSQL's jsonb cannot hold a lone surrogate (tests/security/test_hostile_storage.py)"
    ),
)
async def test_a_stored_row_that_cannot_be_encoded_blocks_nobody(
    tmp_path: Any, collection: Any, member: Any, issue_token: Any, settings_fast: None
) -> None:
    """Issue 14's first reproduction, with the row planted as an old server would have left
    it: the pull and the live feed go on without it (DG-5005 recorded), never close 4500."""
    from channels.db import database_sync_to_async
    from django.db import transaction

    from accounts.access import System
    from replication.models import Collection, Document, ErrorEvent
    from replication.services.documents import document_put

    def put(doc_id: str, body: dict[str, Any], bad: bool = False) -> None:
        document_put(
            actor=System("test"), collection_id=collection.pk, doc_id=doc_id, body=body, origin="s"
        )
        if bad:  # behind the services' back, as before the door
            Document.objects.filter(doc_id=doc_id).update(body={"t": "\ud800"})

    def seed() -> str:
        put("a", {"v": 1})
        put("user-kw/x", {}, bad=True)
        put("b", {"v": 2})
        return str(issue_token(member("rita", "reader"), "read write"))

    def write_more() -> int:
        with transaction.atomic():
            put("bad-2", {}, bad=True)
            put("c", {"v": 3})
        return int(Collection.objects.get(pk=collection.pk).last_seq)

    token = await database_sync_to_async(seed)()
    server = DaphneServer.start(tmp_path=tmp_path)
    try:
        reader = WireReplica(
            transport=await WebsocketsTransport.open(f"{server.ws_url}/ws/datagate/acme/notes/"),
            token=token,
            tenant="acme",
            collection="notes",
        )
        await reader.sync()
        assert set(reader.documents) == {"a", "b"}
        assert not reader.errors
        last = await database_sync_to_async(write_more)()
        await reader.feed_until(last)
        assert set(reader.documents) == {"a", "b", "c"}
        assert not reader.errors
        assert await reader.disconnect() == 1000
        events = await database_sync_to_async(
            lambda: set(ErrorEvent.objects.values_list("code", flat=True))
        )()
        assert "DG-5005" in events
        assert "DG-5003" not in events
    finally:
        server.stop()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/console/t/acme/c/notes/document/?id=%00",
        "/console/t/acme/c/notes/document/?id=%ED%A0%80",
        "/console/t/acme/c/notes/documents/?id=a%00b",
        "/console/t/acme/c/notes/document/edit/?id=%00",
    ],
)
def test_console_reads_with_odd_ids_never_answer_500(
    collection: Any, member: Any, url: str
) -> None:
    from django.test import Client

    client = Client()
    client.force_login(member("ada", "admin"))
    assert client.get(url).status_code < 500


# --- hostile selectors: data views over HTTP on a real daphne ---------------------------------

operators = st.sampled_from(
    ["$eq", "$ne", "$gt", "$in", "$nin", "$exists", "$and", "$or", "$not", "$regex", "$where"]
)
selector_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(operators | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=25,
)


def _deep(levels: int) -> dict[str, Any]:
    selector: dict[str, Any] = {"a": 1}
    for _ in range(levels):
        selector = {"$not": selector}
    return selector


def test_hostile_selectors_get_selector_codes_never_a_500(
    tmp_path: Any, collection: Any, member: Any, issue_token: Any, settings_fast: None
) -> None:
    admin_token = issue_token(member("ada", "admin"), "read write")
    server = DaphneServer.start(tmp_path=tmp_path)
    views = "/api/v1/tenants/acme/collections/notes/views/"
    seen: set[int] = set()
    try:

        @settings(
            max_examples=max(10, EXAMPLES // 2),
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(selector=selector_junk)
        @example(selector=_deep(500))
        @example(selector={"$or": [{f"f{i}": i} for i in range(5000)]})
        @example(selector={"a": {"$in": list(range(10_000))}})
        def post(selector: Any) -> None:
            name = f"v{uuid.uuid4().hex[:10]}"
            body = json.dumps({"name": name, "selector": selector}, allow_nan=True).encode()
            status, answer = http(server, "POST", views, admin_token, body)
            seen.add(status)
            assert status in (201, 400), answer
            if status == 400:
                code = json.loads(answer)["error"]["code"]
                assert code in {"DG-4101", "DG-4102", "DG-4103", "DG-4104", "DG-8004", "DG-2009"}
                return
            status, answer = http(server, "GET", f"{views}{name}/documents/", admin_token)
            assert status == 200, answer

        post()
    finally:
        server.stop()
    assert 400 in seen
