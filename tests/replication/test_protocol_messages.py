"""Parsing frames into typed messages, and every failure into its own error code."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataGateError, ErrorCode
from replication.protocol import messages as m


def frame(message_type: str, **body: Any) -> str:
    return json.dumps({"header": {"id": "1", "messageType": message_type}, **body})


EXAMPLES: dict[str, dict[str, Any]] = {
    m.CONNECT: {"authToken": "tok", "replicaName": "phone", "capabilities": ["live"]},
    m.CONNECT_ACK: {
        "tombstoneTtl": 30,
        "batchSize": 500,
        "endMarkers": {"collectionMarker": 3, "tombstoneMarker": 9},
        "capabilities": ["live"],
        "readOnly": False,
    },
    m.ERROR: {"error": "DG-2001 frame is not JSON: x", "code": "DG-2001", "fatal": True},
    m.DISCONNECT: {},
    m.BATCH_START: {
        "feed": {"changeSet": [{"_id": "a"}], "tombstoneMap": {"b": 1}},
        "nextOffset": 1,
        "batchSize": 10,
        "startMarkers": None,
        "endMarkers": {"collectionMarker": None, "tombstoneMarker": None},
        "reset": True,
    },
    m.BATCH_CONTINUE: {"feed": {"changeSet": []}},
    m.BATCH_END: {"startMarkers": {"collectionMarker": 0, "tombstoneMarker": 0}, "batchSize": 5},
    m.BATCH_ACK: {"receipt": {"added": ["a"], "removed": [], "rejected": []}},
    m.BATCH_END_ACK: {"startMarkers": None, "endMarkers": None},
    m.FEED: {"feed": {"changeSet": []}, "startMarkers": {"collectionMarker": 1}},
    m.FEED_ACK: {
        "receipt": {
            "added": [],
            "removed": [],
            "rejected": [{"id": "x", "code": "c", "error": "e"}],
        }
    },
    m.TOKEN_REFRESH: {"authToken": "fresh"},
    m.TOKEN_REFRESH_ACK: {"expires": 1_800_000_000_000, "scopes": ["read"], "readOnly": True},
    m.RANGE_CHECK: {"ranges": [{"lo": 0, "hi": 4096, "count": 3, "hash": "00ff00ff00ff00ff"}]},
    m.RANGE_RESULT: {
        "markers": {"collectionMarker": 3, "tombstoneMarker": 9},
        "ranges": [{"lo": 0, "hi": 4096, "status": "equal"}],
        "equal": True,
    },
    m.RANGE_FETCH: {"ids": ["a", "b"]},
    m.RANGE_DOCS: {"feed": {"changeSet": [], "tombstoneMap": {"a": 1}}, "missing": ["b"]},
}


def test_every_message_type_has_an_example() -> None:
    assert set(EXAMPLES) == m.MESSAGE_TYPES


@pytest.mark.parametrize("message_type", sorted(EXAMPLES))
def test_every_message_type_parses_into_its_model(message_type: str) -> None:
    parsed = m.parse_message(frame(message_type, **EXAMPLES[message_type]))
    assert type(parsed) is m.MODELS[message_type]
    assert parsed.header.messageType == message_type


@pytest.mark.parametrize(
    ("text", "code", "named"),
    [
        ("nope", ErrorCode.NOT_JSON, ""),
        ("[]", ErrorCode.MISSING_HEADER, ""),
        (json.dumps({"header": {"messageType": m.FEED}}), ErrorCode.INVALID_MESSAGE, "header.id"),
        (json.dumps({"header": {"id": 5, "messageType": m.FEED}}), ErrorCode.INVALID_MESSAGE, "id"),
        (frame("no2.sync.bogus"), ErrorCode.UNKNOWN_MESSAGE_TYPE, "no2.sync.bogus"),
        (frame(m.CONNECT, authToken=42), ErrorCode.INVALID_MESSAGE, "authToken"),
        (frame(m.BATCH_END, batchSize=0), ErrorCode.INVALID_MESSAGE, "batchSize"),
        (frame(m.BATCH_START, feed={"changeSet": {}}), ErrorCode.INVALID_MESSAGE, "changeSet"),
        (
            frame(m.BATCH_END, startMarkers={"collectionMarker": -1}),
            ErrorCode.INVALID_MESSAGE,
            "startMarkers.collectionMarker",
        ),
        (frame(m.FEED_ACK, receipt={"added": [1]}), ErrorCode.INVALID_MESSAGE, "receipt.added"),
        (frame(m.CONNECT, authToken="t", capabilities="live"), ErrorCode.INVALID_MESSAGE, "capab"),
    ],
)
def test_each_bad_frame_gets_its_code_and_names_the_field(
    text: str, code: ErrorCode, named: str
) -> None:
    with pytest.raises(DataGateError) as caught:
        m.parse_message(text)
    assert caught.value.error is code
    assert named in caught.value.text
    assert len(caught.value.text) <= 123


def test_a_spliced_frame_is_the_header_plus_the_shared_body() -> None:
    body = m.encode_body({"feed": {"changeSet": []}, "endMarkers": {"collectionMarker": 2}})
    header = {"id": "h", "messageType": m.FEED}
    assert json.loads(m.splice(header, body)) == {
        "header": header,
        "feed": {"changeSet": []},
        "endMarkers": {"collectionMarker": 2},
    }
    assert json.loads(m.splice(header, m.encode_body({}))) == {"header": header}


HEADER_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.text(alphabet=st.characters(codec="utf-8")),
    st.text(alphabet=st.sampled_from(["\ud800", "\x00", "\u2028", '"', "\\", "a"]), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), HEADER_VALUES, max_size=10))
def test_a_header_is_written_fast_as_the_json_encoder_writes_it(header: dict[str, Any]) -> None:
    try:
        expected: Any = json.loads(m.encode(header))
    except ValueError:  # a lone surrogate: json.dumps writes it, no decoder reads it back
        expected = None
    fast = m.encode_header(header)
    if expected is None:
        assert fast == m.encode(header)
    else:
        assert json.loads(fast) == expected
