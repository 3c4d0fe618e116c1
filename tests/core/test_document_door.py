"""The one document door (`core.door`): what it refuses, with which code, through every
interface that stores documents, and in-process property tests of the door itself."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.door import DoorLimits, document_text, id_check, printable, too_deep
from core.envelope import decode_frame
from core.errors import DataGateError, ErrorCode
from replication.protocol.messages import encode

T0 = 1_700_000_000_000
DOOR_CODES = {"DG-4010", "DG-4011", "DG-4012", "DG-4013"}


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def refusal(body: Any, limits: DoorLimits) -> str:
    with pytest.raises(DataGateError) as caught:
        document_text(body, doc_id="d", limits=limits)
    return caught.value.code


# --- the door itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"t": "\ud800"}, "DG-4010"),
        ({"t": ["ok", {"deep": "x\udfffy"}]}, "DG-4010"),
        ({"\udc80key": 1}, "DG-4010"),
        ({"t": "a\x00b"}, "DG-4010"),
        ({"a\x00": 1}, "DG-4010"),
        ({"n": math.nan}, "DG-4012"),
        ({"n": [math.inf]}, "DG-4012"),
        ({"n": -math.inf}, "DG-4012"),
        ({"n": json.loads("1e999")}, "DG-4012"),
        ({"s": {1, 2}}, "DG-4012"),
        ({"n": nested(64)}, "DG-4011"),
        ({"n": nested(5000)}, "DG-4011"),
        ({"t": "x" * 2000}, "DG-4013"),
    ],
)
def test_the_door_refuses_with_its_own_code(body: Any, code: str) -> None:
    assert refusal(body, DoorLimits(max_depth=64, max_bytes=1000)) == code


def test_the_door_keeps_what_it_can_serve_exactly() -> None:
    body = {
        "emoji": "\U0001f600 pair \ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16"),
        "big": 2**200,
        "neg": -(2**70),
        "float": 1e308,
        "text": "a literal \\u0000 is six characters, not NUL",
        "nest": nested(62),
        "controls": "tab\tnewline\n",
    }
    text = document_text(body, doc_id="d")
    assert json.loads(text) == body
    assert text.encode("utf-8")


def test_depth_counts_the_document_as_level_one() -> None:
    assert not too_deep({"a": {"b": [1]}}, 3)
    assert too_deep({"a": {"b": [[1]]}}, 3)
    # Many brackets side by side are not depth: the exact walk clears them.
    assert document_text({"rows": [{"a": [1]} for _ in range(500)]}, doc_id="d")


@pytest.mark.parametrize(
    "raw",
    ["", "x" * 129, "a\x00b", "tab\there", "del\x7f", "c1\x85", "lone\ud800", 7, None, ["a"]],
)
def test_ids_outside_the_rules_are_dg_4002(raw: Any) -> None:
    with pytest.raises(DataGateError) as caught:
        id_check(raw)
    assert caught.value.code == "DG-4002"
    assert caught.value.text.encode("utf-8")


def test_origins_follow_the_id_rules_but_may_be_empty() -> None:
    assert id_check("", origin=True) == ""
    for raw in ("o\ud800", "o\x00", "x" * 129, 5):
        with pytest.raises(DataGateError) as caught:
            id_check(raw, origin=True, doc_id="d")
        assert caught.value.code == "DG-4008"


def test_a_rejected_id_is_named_so_that_the_receipt_can_be_sent() -> None:
    shown = printable("user-kw/\ud800\x00x")
    assert shown.encode("utf-8")
    assert "\\ud800" in shown
    text = DataGateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, message_type="\ud800").text
    assert text.encode("utf-8")


# --- decoding hostile frames ------------------------------------------------------------------


def frame_code(text: str) -> str:
    with pytest.raises(DataGateError) as caught:
        decode_frame(text)
    return caught.value.code


def test_a_frame_too_deep_to_decode_is_dg_2009() -> None:
    assert frame_code('{"header":{},"x":' + "[" * 10_000 + "]" * 10_000 + "}") == "DG-2009"
    assert frame_code("[" * 100_000) == "DG-2009"


def test_text_outside_the_documents_must_travel_back() -> None:
    header = '{"id":"h","messageType":"connect"}'
    assert frame_code('{"header":{"id":"\\ud800","messageType":"connect"}}') == "DG-2004"
    assert frame_code('{"header":' + header + ',"authToken":"a\\u0000"}') == "DG-2004"
    # Documents are the door's: they pass here and are judged one by one.
    feed = '{"changeSet":[{"t":"\\ud800"}]}'
    assert decode_frame('{"header":' + header + ',"feed":' + feed + "}")["feed"]


# --- property tests of the door ---------------------------------------------------------------

ANY_TEXT = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=12
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ANY_TEXT
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(ANY_TEXT, VALUES, max_size=5))
def test_the_door_either_keeps_a_body_exactly_or_refuses_it_with_its_code(body: Any) -> None:
    limits = DoorLimits(max_depth=6, max_bytes=4000)
    refused: DataGateError | None = None
    try:
        text = document_text(body, doc_id="d", limits=limits)
    except DataGateError as error:
        refused = error
    if refused is not None:
        assert refused.code in DOOR_CODES
        assert refused.text.encode("utf-8")
        return
    assert len(text.encode("utf-8")) <= limits.max_bytes
    assert not too_deep(body, limits.max_depth)
    assert "\x00" not in json.dumps(body, ensure_ascii=False)
    served = encode({"feed": {"changeSet": [body]}})
    assert served.encode("utf-8")
    assert json.loads(text) == json.loads(json.dumps(body))


@settings(max_examples=300, deadline=None)
@given(raw=ANY_TEXT | st.text(max_size=140) | st.integers() | st.none())
def test_an_accepted_id_is_printable_text_that_travels(raw: Any) -> None:
    refused: DataGateError | None = None
    try:
        doc_id = id_check(raw)
    except DataGateError as error:
        refused = error
    if refused is not None:
        assert refused.code == "DG-4002"
        return
    assert 1 <= len(doc_id) <= 128
    assert doc_id.encode("utf-8")
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in doc_id)


# --- through the services: one bad document in a chunk ---------------------------------------


@pytest.mark.storage
@pytest.mark.django_db
def test_a_refused_document_is_rejected_in_the_receipt_and_the_rest_applies(
    collection: Any,
) -> None:
    from accounts.access import System
    from replication.models import Document
    from replication.services.engine import batch_apply

    def doc(doc_id: Any, **fields: Any) -> dict[str, Any]:
        return {"_id": doc_id, "_revision": 1, "_modified": T0, **fields}

    feed = {
        "changeSet": [
            doc("good-1", t="fine"),
            doc("user-kw/x", t="\ud800"),
            doc("user-kw/\ud800"),
            doc("nul", t="a\x00"),
            doc("deep", n=nested(80)),
            doc("nan", n=math.nan),
            doc("big", t="x" * 2_000_000),
            doc("ctl\x01"),
            {**doc("origin"), "_origin": "o\udc00"},
            doc("good-2", big=2**100),
        ],
        "tombstoneMap": {"tomb\ud800": T0, "tomb\x00": T0},
    }
    result = batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin="r1")
    receipt = result.receipt()
    assert encode({"receipt": receipt}).encode("utf-8")
    assert receipt["added"] == ["good-1", "good-2"]
    codes = [(r["id"], r["code"]) for r in receipt["rejected"]]
    assert codes == [
        ("user-kw/x", "DG-4010"),
        ("user-kw/\\ud800", "DG-4002"),
        ("nul", "DG-4010"),
        ("deep", "DG-4011"),
        ("nan", "DG-4012"),
        ("big", "DG-4013"),
        ("ctl\x01", "DG-4002"),
        ("origin", "DG-4008"),
        ("tomb\\ud800", "DG-4002"),
        ("tomb\x00", "DG-4002"),
    ]
    stored = dict(Document.objects.filter(collection=collection).values_list("doc_id", "body"))
    assert stored == {"good-1": {"t": "fine"}, "good-2": {"big": 2**100}}


# --- the HTTP API: 400 (413) in the one error shape, nothing stored ---------------------------


@pytest.fixture
def writer_api(db: Any, issue_token: Any, collection: Any) -> Any:
    from rest_framework.test import APIClient

    from tests.support.fast_accounts import fast_cli_application, person

    fast_cli_application()
    client = APIClient()
    token = issue_token(person("wendy", "acme", "writer"))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


BASE = "/api/v1/tenants/acme/collections/notes/documents"


@pytest.mark.parametrize(
    ("path", "raw", "status", "code"),
    [
        ("a", '{"t": "\\ud800"}', 400, "DG-4010"),
        ("a", '{"\\udfff": 1}', 400, "DG-4010"),
        ("a", '{"t": "\\u0000"}', 400, "DG-4010"),
        ("a", '{"t": ' + "[" * 10_000 + "]" * 10_000 + "}", 400, "DG-2009"),
        ("a", '{"t": ' + "[" * 100 + "]" * 100 + "}", 400, "DG-4011"),
        ("a", '{"t": 1e999}', 400, "DG-4012"),
        ("a", '{"t": NaN}', 400, "DG-8004"),
        ("a", '{"t": "' + "x" * 1_100_000 + '"}', 413, "DG-4013"),
        ("bad%01id", '{"t": 1}', 400, "DG-4002"),
        ("x" * 129, '{"t": 1}', 400, "DG-4002"),
    ],
)
def test_the_http_api_answers_bad_documents_with_their_code(
    writer_api: Any, path: str, raw: str, status: int, code: str
) -> None:
    from replication.models import Document

    response = writer_api.put(f"{BASE}/{path}", data=raw, content_type="application/json")
    body = response.json()
    assert (response.status_code, body["error"]["code"]) == (status, code), body
    assert Document.objects.count() == 0
    listing = writer_api.get(f"{BASE}/")
    assert listing.status_code == 200
    assert listing.json()["documents"] == []


# --- the console form -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_console_form_shows_the_door_s_refusal(collection: Any) -> None:
    from console.forms import DocumentForm

    deep = DocumentForm(data={"doc_id": "a", "body": "[" * 10_000 + "]" * 10_000})
    assert not deep.is_valid()
    assert "DG-2009" in str(deep.errors)


@pytest.mark.django_db
def test_topic_payloads_pass_the_door(tenant: Any) -> None:
    from topics.services import Publication, messages_publish, topic_create

    topic = topic_create(tenant=tenant, name="news", scope="global", owner_id=None)
    for publication, code in [
        (Publication("m1", {"t": "\ud800"}), "DG-4010"),
        (Publication("m1", nested(100)), "DG-4011"),
        (Publication("m1", math.inf), "DG-4012"),
        (Publication("m\x00", 1), "DG-4002"),
    ]:
        with pytest.raises(DataGateError) as caught:
            messages_publish(topic_id=topic.pk, messages=[publication], publisher_id=None)
        assert caught.value.code == code
    assert messages_publish(topic_id=topic.pk, messages=[Publication("ok", 1)], publisher_id=None)


# --- the CouchDB door ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_couchdb_endpoint_refuses_through_the_same_door(
    collection: Any, issue_token: Any
) -> None:
    from asgiref.sync import sync_to_async
    from channels.testing import HttpCommunicator

    from couchdb.asgi import application
    from tests.support.couchdb_inprocess import couch
    from tests.support.fast_accounts import fast_cli_application, person

    def setup() -> str:
        fast_cli_application()
        return str(issue_token(person("ann", "acme", "writer"), "read write"))

    token = await sync_to_async(setup)()
    status, body = await couch("PUT", "acme/notes/a", token, {"t": "\ud800"})
    assert status == 400, body
    assert body["reason"].startswith("DG-4010"), body
    status, body = await couch("PUT", "acme/notes/a", token, {"t": {"u": nested(100)}})
    assert status == 400, body
    assert body["reason"].startswith("DG-4011"), body
    communicator = HttpCommunicator(
        application,
        "PUT",
        "/couchdb/acme/notes/b",
        body=b'{"t":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        headers=[
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
    )
    response = await communicator.get_response(timeout=10)
    assert response["status"] == 400
    assert b"DG-2009" in response["body"]
