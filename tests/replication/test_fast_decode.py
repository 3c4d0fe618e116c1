"""The fast frame decoding and door encoding (msgspec, issue 21) decide exactly as before.

The oracle is the old path itself: `json.loads` for frames, and `document_text` without
`json_values` for documents. On generated frames and documents (NaN, Infinity, `1e999`, huge
integers, lone surrogates escaped and raw, NUL, deep nesting, broken text) both must give the
same value, or the same DG code and message.
"""

from __future__ import annotations

import json
import math
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from core import envelope
from core.door import DoorLimits, document_text
from core.errors import DataGateError

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "\x7f", '"', "\\", "{", "["]),
    ),
    max_size=12,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=30,
)
BODIES = st.dictionaries(TEXT, VALUES, max_size=6)


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except DataGateError as error:
        return error.code, error.text


def _same_value(left: Any, right: Any) -> bool:
    """Equality that holds NaN equal to NaN (json.loads may give it) and tells 1 from 1.0."""
    if isinstance(left, float) and isinstance(right, float):
        return (math.isnan(left) and math.isnan(right)) or left == right
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same_value(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same_value, left, right))
    return bool(left == right)


def _refuse(text: str | bytes) -> Any:
    raise ValueError("the old path: json.loads and the full envelope check")


def _old_decode(text: str | bytes) -> tuple[str, Any]:
    with mock.patch.object(envelope, "_fast_loads", _refuse):
        return _outcome(lambda: envelope.decode_frame(text))


def _frame_texts() -> st.SearchStrategy[str | bytes]:
    frames = st.builds(
        lambda header, feed, extra: {"header": header, "feed": feed, **extra},
        st.fixed_dictionaries({"id": TEXT, "messageType": TEXT}),
        st.fixed_dictionaries({"changeSet": st.lists(BODIES, max_size=3)}),
        st.dictionaries(TEXT, VALUES, max_size=2),
    )
    as_text = st.builds(
        lambda frame, ascii_only: json.dumps(frame, ensure_ascii=ascii_only),
        st.one_of(frames, VALUES),
        st.booleans(),
    )
    broken = st.builds(
        lambda text, cut, junk: text[:cut] + junk + text[cut:],
        as_text,
        st.integers(min_value=0, max_value=200),
        st.sampled_from(["", "x", "NaN", "1e999", "-", "\t", "\\ud800", "[" * 3, "}", "\x00"]),
    )
    return st.one_of(
        as_text, broken, broken.map(lambda t: t.encode("utf-8", "surrogatepass")), TEXT
    )


@settings(max_examples=400, deadline=None)
@given(_frame_texts())
def test_frame_decoding_gives_what_json_loads_gave(text: str | bytes) -> None:
    old = _old_decode(text)
    new = _outcome(lambda: envelope.decode_frame(text))
    assert old[0] == new[0]
    if old[0] == "ok":
        assert _same_value(old[1], new[1])
    else:
        assert old[1] == new[1]


def test_frames_msgspec_refuses_fall_back_to_the_old_decoding() -> None:
    for text in (
        '{"header":{"id":"a","messageType":"t"},"x":NaN}',
        '{"header":{"id":"a","messageType":"t"},"x":1e999}',
        '{"header":{"id":"a","messageType":"t"},"x":"\\ud800"}',
        '{"header":{"id":"a","messageType":"t"},"x":' + "9" * 4300 + "}",
        "[" * 100_000 + "]" * 100_000,
    ):
        assert _outcome(lambda t=text: envelope.decode_frame(t)) == _old_decode(text)


def test_a_plain_ack_skips_the_envelope_check_and_the_rest_still_get_it() -> None:
    ack = '{"header":{"id":"a","messageType":"feed.ack"},"receipt":{"endMarkers":{"seq":4}}}'
    with mock.patch.object(envelope, "_envelope_check") as check:
        envelope.decode_frame(ack)
        envelope.decode_frame(ack.encode())
    assert check.call_count == 0
    for frame in (
        '{"header":{"id":"a\\u0000","messageType":"t"}}',  # NUL in the header: DG-2004
        '{"header":{"id":"a","messageType":"t","x":' + "[" * 70 + "]" * 70 + "}}",
    ):
        with mock.patch.object(envelope, "_envelope_check") as check:
            envelope.decode_frame(frame)
        assert check.call_count == 1
        assert _outcome(lambda f=frame: envelope.decode_frame(f)) == _old_decode(frame)
    nul = '{"header":{"id":"a\\u0000","messageType":"t"}}'
    assert _outcome(lambda: envelope.decode_frame(nul))[0] == "DG-2004"


LIMITS = st.builds(
    DoorLimits,
    max_depth=st.integers(min_value=1, max_value=8),
    max_bytes=st.integers(min_value=8, max_value=400),
)


@settings(max_examples=600, deadline=None)
@given(BODIES, LIMITS)
def test_the_door_fast_encoding_accepts_and_refuses_exactly_as_before(
    body: dict[str, Any], limits: DoorLimits
) -> None:
    old = _outcome(lambda: document_text(body, doc_id="d", limits=limits))
    new = _outcome(lambda: document_text(body, doc_id="d", limits=limits, json_values=True))
    assert old[0] == new[0]
    if old[0] == "ok":
        assert _same_value(json.loads(old[1]), json.loads(new[1]))
        assert _same_value(json.loads(new[1]), body)
    else:
        assert old[1] == new[1]


def test_the_door_fast_encoding_of_a_deep_document_is_the_exact_refusal() -> None:
    deep: Any = "\x00"
    for _ in range(3000):
        deep = [deep]
    body = {"a": deep}
    old = _outcome(lambda: document_text(body, doc_id="d"))
    assert old == _outcome(lambda: document_text(body, doc_id="d", json_values=True))
    assert old[0] == "DG-4011"
