"""`replication.changes.parse_feed` is written for speed (it runs for every pushed document);
these property tests hold it to a plain reference, written here the obvious way: for any
feed, the same versions (id, kind, stamps, origin, body, stored text) and the same rejections
with the same codes, in the same order."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.door import DEFAULT_LIMITS, DoorLimits, document_text, id_check, printable
from core.errors import DataGateError, ErrorCode
from replication.changes import MAX_INT, META_FIELDS, Version, parse_feed
from replication.protocol.conflicts import WRITE

NOW = 1_700_000_000_000
SKEW = 60_000
LIMITS = DoorLimits(max_depth=6, max_bytes=400)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def reference_document(
    raw: object, *, index: int, default_origin: str, limits: DoorLimits, json_values: bool
) -> Version:
    if not isinstance(raw, Mapping):
        raise DataGateError(ErrorCode.DOCUMENT_NOT_OBJECT, index=index)
    doc_id = id_check(raw.get("_id"))
    revision: Any = raw.get("_revision")
    if not _is_int(revision) or not 1 <= revision <= MAX_INT:
        raise DataGateError(ErrorCode.BAD_REVISION, doc_id=doc_id, value=revision)
    modified: Any = raw.get("_modified")
    if not _is_int(modified) or not 0 <= modified <= MAX_INT:
        raise DataGateError(ErrorCode.BAD_MODIFIED, doc_id=doc_id, value=modified)
    origin: Any = raw.get("_origin", default_origin)
    if origin is None:
        origin = default_origin
    id_check(origin, origin=True, doc_id=doc_id)
    body: dict[str, Any] = {}
    for name, value in raw.items():
        if name in META_FIELDS:
            continue
        if not isinstance(name, str) or name.startswith("_"):
            raise DataGateError(ErrorCode.RESERVED_FIELD, doc_id=doc_id, field=name)
        body[name] = value
    text = document_text(body, doc_id=doc_id, limits=limits, json_values=json_values)
    ahead = modified - NOW
    if ahead > SKEW:
        raise DataGateError(ErrorCode.CLOCK_SKEW, doc_id=doc_id, ahead_ms=ahead, limit_ms=SKEW)
    return Version(doc_id, WRITE, modified, revision, origin, body, text)


def reference_feed(
    change_set: list[Any], *, origin: str, limits: DoorLimits, json_values: bool
) -> tuple[list[Version], list[tuple[str, str, str]]]:
    """The versions made and the rejections (id shown, code, text), each in feed order."""
    versions: list[Version] = []
    rejections: list[tuple[str, str, str]] = []
    for index, raw in enumerate(change_set):
        try:
            versions.append(
                reference_document(
                    raw, index=index, default_origin=origin, limits=limits, json_values=json_values
                )
            )
        except DataGateError as error:
            raw_id = raw.get("_id") if isinstance(raw, Mapping) else None
            shown = printable(raw_id) if isinstance(raw_id, str) else ""
            rejections.append((shown, error.code, error.text))
    return versions, rejections


# Each meta field is mostly valid, so that most documents get as far as the later checks.
GOOD_IDS = st.sampled_from(["a", "b", "doc-1"])
BAD_IDS = st.sampled_from(["", "x" * 129, "a\x00b", "\ud800", "ok\x7f"]) | st.integers()
GOOD_ORIGINS = st.sampled_from(["r1", "r2", "r3", ""]) | st.none()
BAD_ORIGINS = st.sampled_from(["x" * 129, "o\x01", "\udfff"]) | st.integers()
GOOD_STAMPS = st.sampled_from([1, NOW, NOW + SKEW, MAX_INT])
BAD_STAMPS = st.sampled_from([0, NOW + SKEW + 1, MAX_INT + 1, -1, True, False, 1.0, "1", None])
FIELD_NAMES = st.sampled_from(["title", "n", "_x", "_rev", "__", "a\x00", "\ud800k", "k"])
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def wire_documents(draw: st.DrawFn) -> Any:
    doc: dict[Any, Any] = {}
    for name, good, bad in (
        ("_id", GOOD_IDS, BAD_IDS),
        ("_revision", GOOD_STAMPS, BAD_STAMPS),
        ("_modified", GOOD_STAMPS | st.just(0), BAD_STAMPS),
        ("_origin", GOOD_ORIGINS, BAD_ORIGINS),
    ):
        roll = draw(st.integers(0, 19))
        if roll >= 2:  # 1 in 10 left out
            doc[name] = draw(good if roll >= 4 else bad)
    for _ in range(draw(st.integers(0, 4))):
        doc[draw(FIELD_NAMES | st.integers(0, 3))] = draw(VALUES)
    shape = draw(st.sampled_from(["dict", "dict", "dict", "proxy", "list", "string"]))
    if shape == "proxy":
        return MappingProxyType(doc)
    if shape == "list":
        return list(doc)
    if shape == "string":
        return "not a document"
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    change_set=st.lists(wire_documents(), max_size=8),
    origin=st.sampled_from(["r1", "r2"]),
    json_values=st.booleans(),
    small=st.booleans(),
)
def test_parse_feed_matches_the_plain_reference(
    change_set: list[Any], origin: str, json_values: bool, small: bool
) -> None:
    limits = LIMITS if small else DEFAULT_LIMITS
    if json_values:  # only what a JSON decoder makes: dicts with str keys
        change_set = [
            doc
            for doc in change_set
            if type(doc) is dict and all(isinstance(name, str) for name in doc)
        ]
    parsed = parse_feed(
        {"changeSet": change_set},
        origin=origin,
        now_ms=NOW,
        max_skew_ms=SKEW,
        limits=limits,
        json_values=json_values,
    )
    versions, rejections = reference_feed(
        change_set, origin=origin, limits=limits, json_values=json_values
    )
    assert parsed.versions == versions
    assert [(r.doc_id, r.error.code, r.error.text) for r in parsed.rejections] == rejections
