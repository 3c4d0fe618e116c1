"""Turning a wire `feed` into validated versions, and versions back into wire documents.

Pure functions, no Django. A bad change is rejected on its own with its error code; the rest
of the feed goes on (PROTOCOL.md section 5, docs/errors.md 4xxx). Every document passes the
one door, `core.door`, here: whichever interface it came through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from core.door import DEFAULT_LIMITS, DoorLimits, document_text, id_check
from core.door import printable as _display
from core.errors import DataGateError, ErrorCode
from replication.protocol.conflicts import DELETE, WRITE, VersionKey, version_key
from replication.protocol.messages import EncodedDocument

META_FIELDS = ("_id", "_revision", "_modified", "_origin")
MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Version:
    """One version of one document: a write (with body) or a delete (body None)."""

    doc_id: str
    kind: int
    modified: int
    revision: int
    origin: str
    body: dict[str, Any] | None = None
    # The body's JSON text: as the door encoded it (stored as is), when it came through it; as
    # the database holds it, when it was read as text (`selectors.changes_since(as_text=True)`,
    # body None then: `body_of` decodes it for those who need the values).
    text: str | None = None

    def key(self) -> VersionKey:
        return version_key(
            kind=self.kind, modified=self.modified, revision=self.revision, origin=self.origin
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    doc_id: str
    error: DataGateError

    def to_wire(self) -> dict[str, str]:
        return {"id": self.doc_id, "code": self.error.code, "error": self.error.text}


@dataclass
class ParsedFeed:
    versions: list[Version] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _display_id(raw: object) -> str:
    """The id a rejection names: cut, and escaped where it could not travel in a frame."""
    return _display(raw) if isinstance(raw, str) else ""


def _check_skew(doc_id: str, stamp: int, now_ms: int, max_skew_ms: int) -> None:
    ahead = stamp - now_ms
    if ahead > max_skew_ms:
        raise DataGateError(
            ErrorCode.CLOCK_SKEW, doc_id=doc_id, ahead_ms=ahead, limit_ms=max_skew_ms
        )


def parse_document(
    raw: object,
    *,
    index: int,
    default_origin: str,
    now_ms: int,
    max_skew_ms: int,
    limits: DoorLimits = DEFAULT_LIMITS,
    json_values: bool = False,
    origins_checked: set[str] | None = None,
) -> Version:
    """Validate one wire document through the door; raise DataGateError with its own code.

    `json_values`: `raw` came out of a JSON decoder (see `core.door.document_text`).
    `origins_checked`: origins that already passed `id_check` (a feed's documents mostly name
    the same one), added to as they pass.

    Written for speed: it runs for every document of every push (bench/RESULTS.md, issue 21).
    The checks and the order they run in are those of the plain version: the exact type
    tests run only for what is not plainly an int or a plain dict."""
    if not isinstance(raw, Mapping):
        raise DataGateError(ErrorCode.DOCUMENT_NOT_OBJECT, index=index)
    get = raw.get
    doc_id = id_check(get("_id"))
    revision = get("_revision")
    if (type(revision) is not int and not _is_int(revision)) or not 1 <= revision <= MAX_INT:  # type: ignore[operator]
        raise DataGateError(ErrorCode.BAD_REVISION, doc_id=doc_id, value=revision)
    modified = get("_modified")
    if (type(modified) is not int and not _is_int(modified)) or not 0 <= modified <= MAX_INT:  # type: ignore[operator]
        raise DataGateError(ErrorCode.BAD_MODIFIED, doc_id=doc_id, value=modified)
    origin = get("_origin", default_origin)
    if origin is None:
        origin = default_origin
    if origins_checked is None or origin not in origins_checked:
        id_check(origin, origin=True, doc_id=doc_id)
        if origins_checked is not None:
            origins_checked.add(origin)
    if type(raw) is dict:
        body: dict[str, Any] = raw.copy()
        for name in META_FIELDS:
            body.pop(name, None)
    else:
        body = {name: value for name, value in raw.items() if name not in META_FIELDS}
    for name in body:
        if not isinstance(name, str) or name.startswith("_"):
            raise DataGateError(ErrorCode.RESERVED_FIELD, doc_id=doc_id, field=name)
    text = document_text(body, doc_id=doc_id, limits=limits, json_values=json_values)
    if modified - now_ms > max_skew_ms:  # type: ignore[operator]
        _check_skew(doc_id, modified, now_ms, max_skew_ms)  # type: ignore[arg-type]
    return Version(doc_id, WRITE, modified, revision, origin, body, text)  # type: ignore[arg-type]


def parse_tombstone(
    raw_id: object, raw_time: object, *, origin: str, now_ms: int, max_skew_ms: int
) -> Version:
    doc_id = id_check(raw_id)
    if not _is_int(raw_time) or not 0 <= raw_time <= MAX_INT:  # type: ignore[operator]
        raise DataGateError(ErrorCode.BAD_TOMBSTONE, doc_id=doc_id, value=raw_time)
    _check_skew(doc_id, raw_time, now_ms, max_skew_ms)  # type: ignore[arg-type]
    return Version(doc_id, DELETE, raw_time, 0, origin, None)  # type: ignore[arg-type]


def parse_feed(
    feed: Mapping[str, Any],
    *,
    origin: str,
    now_ms: int,
    max_skew_ms: int,
    limits: DoorLimits = DEFAULT_LIMITS,
    json_values: bool = False,
) -> ParsedFeed:
    """Validate every change of a feed. A feed that is not the right shape raises DG-2004.

    `json_values`: the feed came out of a JSON decoder as it is (a frame's): its documents
    then take the door's fast encoding when they plainly pass (`core.door.document_text`)."""
    change_set = feed.get("changeSet") or []
    tombstone_map = feed.get("tombstoneMap") or {}
    if not isinstance(change_set, list):
        raise DataGateError(
            ErrorCode.INVALID_MESSAGE, message_type="feed", detail="changeSet must be a list"
        )
    if not isinstance(tombstone_map, Mapping):
        raise DataGateError(
            ErrorCode.INVALID_MESSAGE, message_type="feed", detail="tombstoneMap must be an object"
        )
    parsed = ParsedFeed()
    origins_checked: set[str] = set()
    for index, raw in enumerate(change_set):
        try:
            parsed.versions.append(
                parse_document(
                    raw,
                    index=index,
                    default_origin=origin,
                    now_ms=now_ms,
                    max_skew_ms=max_skew_ms,
                    limits=limits,
                    json_values=json_values,
                    origins_checked=origins_checked,
                )
            )
        except DataGateError as error:
            raw_id = raw.get("_id") if isinstance(raw, Mapping) else None
            parsed.rejections.append(Rejection(_display_id(raw_id), error))
    for raw_id, raw_time in tombstone_map.items():
        try:
            parsed.versions.append(
                parse_tombstone(
                    raw_id, raw_time, origin=origin, now_ms=now_ms, max_skew_ms=max_skew_ms
                )
            )
        except DataGateError as error:
            parsed.rejections.append(Rejection(_display_id(raw_id), error))
    return parsed


def newest_per_id(versions: Iterable[Version]) -> dict[str, Version]:
    """The winning version of each id among `versions` (the rule is associative)."""
    best: dict[str, Version] = {}
    for version in versions:
        held = best.get(version.doc_id)
        if held is None or version.key() > held.key():
            best[version.doc_id] = version
    return best


def version_to_wire(version: Version) -> dict[str, Any]:
    """A write version as a wire document (the user's fields plus the meta fields)."""
    doc: dict[str, Any] = dict(version.body or {})
    doc["_id"] = version.doc_id
    doc["_revision"] = version.revision
    doc["_modified"] = version.modified
    doc["_origin"] = version.origin
    return doc


def body_of(version: Version) -> dict[str, Any] | None:
    """The body's values: decoded from its text when it was read as text only."""
    if version.body is None and version.text is not None:
        body: dict[str, Any] = json.loads(version.text)
        return body
    return version.body


# Body texts that are not spliced as they are but decoded and encoded again, so that what the
# encoder would refuse is left out by `encode_served` (docs/decisions/0013): NaN and Infinity
# (Python's json writes them; rows from before the door), `\\ud800`-style escapes (a lone
# surrogate, or a pair written by an ASCII-only encoder), and a key starting with `_` (the meta
# fields would be there twice). The screen also matches harmless text (a value "NaN", a string
# starting with `_`): such a document is only served the slower way.
_DECODE_FIRST = re.compile(r'NaN|Infinity|\\u[dD][89a-fA-F]|"_')


def _decode_first(text: str) -> bool:
    """`_DECODE_FIRST.search(text)`, with plain substring tests first: they scan a body in
    half the regex's time, and the regex runs only when an escape is there to tell apart."""
    return (
        "NaN" in text
        or "Infinity" in text
        or '"_' in text
        or ("\\u" in text and _DECODE_FIRST.search(text) is not None)
    )


# More brackets than this and the body is decoded first: the encoder's recursion limit decides
# whether very deep nesting goes out, as before (docs/decisions/0013).
_SPLICE_MAX_BRACKETS = 256


def _splice_head(text: str | None) -> str | None:
    """A stored body's text without its closing brace, ready for more fields to follow (a
    comma added unless it is empty), if the screen above lets it be spliced; else None."""
    if (
        text is None
        or not text.startswith("{")
        or not text.endswith("}")
        or _decode_first(text)
        or text.count("{") + text.count("[") > _SPLICE_MAX_BRACKETS
    ):
        return None
    head = text[:-1].rstrip()
    return head if head == "{" else head + ","


def splice_fields(text: str | None, fields: str) -> str | None:
    """The stored body `text` with `fields` (JSON `"name":value` pairs, comma-separated)
    after its own, without decoding it; None when the screen says to decode it instead."""
    head = _splice_head(text)
    return None if head is None else f"{head}{fields}}}"


def wire_document(version: Version) -> dict[str, Any] | EncodedDocument:
    """A write version as a wire document: spliced from its body text when it has one that
    passes the screen above (the body is not decoded), else as `version_to_wire` makes it.

    The meta fields follow the user's fields, as in `version_to_wire`, so the decoded document
    is the same. A body read from PostgreSQL's jsonb keeps jsonb's text: its key order (jsonb
    sorts keys) and its spaces after `:` and `,` (valid JSON, a few bytes more).
    """
    text = version.text
    head = _splice_head(text)
    if head is None:
        if version.body is None and text is not None:
            version = Version(
                version.doc_id,
                version.kind,
                version.modified,
                version.revision,
                version.origin,
                json.loads(text),
            )
        return version_to_wire(version)
    meta = (
        f'{head}"_id":{encode_basestring(version.doc_id)},'
        f'"_revision":{version.revision},"_modified":{version.modified}'
    )
    return EncodedDocument(
        version.doc_id, f'{meta},"_origin":{encode_basestring(version.origin)}}}', len(meta)
    )
