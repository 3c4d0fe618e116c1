"""Typed bodies of every replication message (PROTOCOL.md sections 2-4, docs/protocol.md).

`parse_message(frame)` turns one websocket text frame into a typed message: the frame is
decoded once (`envelope.decode_frame`), the header validated, then the body validated against
the model its `messageType` names. Every failure becomes a DataGateError with its own code:

    not JSON                    DG-2001
    no header object            DG-2002
    header fails validation     DG-2004 (the field is named)
    unknown messageType         DG-2003
    body fails validation       DG-2004 (the field is named)

A feed's documents are not validated here: each change is checked on its own by
`replication.changes.parse_feed`, so one bad document is rejected in the receipt and the rest
of its chunk still applies (PROTOCOL.md section 5).

No Django here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from core.door import printable, unencodable
from core.envelope import Header, decode_frame, make_header
from core.errors import DataGateError, ErrorCode
from replication.protocol.markers import Markers
from replication.protocol.ranges import BUCKETS

# --- message type codes (PROTOCOL.md section 3) --------------------------------------------

CONNECT = "no2.sync.connect"
CONNECT_ACK = "no2.sync.connect.ack"
ERROR = "no2.sync.error"
DISCONNECT = "no2.sync.disconnect"
BATCH_START = "no2.sync.batch.start"
BATCH_CONTINUE = "no2.sync.batch.continue"
BATCH_END = "no2.sync.batch.end"
BATCH_ACK = "no2.sync.batch.ack"
BATCH_END_ACK = "no2.sync.batch.end.ack"
FEED = "no2.sync.feed"
FEED_ACK = "no2.sync.feed.ack"
# A fresh token in the middle of a session (docs/protocol.md section 8, "Token refresh").
TOKEN_REFRESH = "no2.sync.token.refresh"  # noqa: S105 (a message type, not a secret)
TOKEN_REFRESH_ACK = "no2.sync.token.refresh.ack"  # noqa: S105

CAPABILITY_LIVE = "live"

# Range checks (docs/protocol.md, "Ranges"): capability `ranges`, in the push phase.
RANGE_CHECK = "no2.sync.range.check"
RANGE_RESULT = "no2.sync.range.result"
RANGE_FETCH = "no2.sync.range.fetch"
RANGE_DOCS = "no2.sync.range.docs"
CAPABILITY_RANGES = "ranges"
# Views (docs/protocol.md section 12): a Connect may name a view; ConnectAck echoes `views`.
CAPABILITY_VIEWS = "views"
RANGE_CHECK_MAX = 256  # ranges in one range.check
RANGE_FETCH_MAX = 500  # ids in one range.fetch
RANGE_MESSAGES = frozenset({RANGE_CHECK, RANGE_RESULT, RANGE_FETCH, RANGE_DOCS})
MAX_LIST = 100_000


class Body(BaseModel):
    """A message: its header plus the body fields. Unknown body keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    message_type: ClassVar[str]

    header: Header


class WireMarkers(BaseModel):
    """`markers` as sent: null values are allowed (a push chunk's markers may be null)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    collectionMarker: StrictInt | None = Field(default=None, ge=0)
    tombstoneMarker: StrictInt | None = Field(default=None, ge=0)

    def markers(self) -> Markers:
        return Markers(self.collectionMarker or 0, self.tombstoneMarker or 0)

    def to_wire(self) -> dict[str, int | None]:
        return {"collectionMarker": self.collectionMarker, "tombstoneMarker": self.tombstoneMarker}


def markers_or_zero(raw: WireMarkers | None) -> Markers:
    return raw.markers() if raw is not None else Markers()


class WireFeed(BaseModel):
    """A `feed`: the shape only. Each change is validated on its own when applied."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    changeSet: list[Any] = Field(default_factory=list, max_length=MAX_LIST)
    tombstoneMap: dict[str, Any] = Field(default_factory=dict, max_length=MAX_LIST)

    def to_wire(self) -> dict[str, Any]:
        return {"changeSet": self.changeSet, "tombstoneMap": self.tombstoneMap}


class Rejected(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: StrictStr
    code: StrictStr
    error: StrictStr


class Receipt(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    added: list[StrictStr] = Field(default_factory=list)
    removed: list[StrictStr] = Field(default_factory=list)
    rejected: list[Rejected] = Field(default_factory=list)


class Connect(Body):
    message_type = CONNECT

    # Missing or empty is not a schema error: it is a token that fails validation (DG-1001,
    # close 4401), like every other bad token (PROTOCOL.md section 4, step 1).
    authToken: StrictStr | None = Field(default=None, max_length=4096)
    replicaName: StrictStr | None = Field(default=None, max_length=200)
    capabilities: list[StrictStr] = Field(default_factory=list, max_length=64)
    view: StrictStr | None = Field(default=None, min_length=1, max_length=64)


class ConnectAck(Body):
    message_type = CONNECT_ACK

    tombstoneTtl: StrictInt
    batchSize: StrictInt
    endMarkers: WireMarkers
    capabilities: list[StrictStr] = Field(default_factory=list)
    readOnly: StrictBool = False


class Error(Body):
    message_type = ERROR

    error: StrictStr
    code: StrictStr | None = None
    fatal: StrictBool = False


class Disconnect(Body):
    message_type = DISCONNECT


class BatchChunk(Body):
    """batch.start and batch.continue: one chunk of changes."""

    feed: WireFeed = Field(default_factory=WireFeed)
    nextOffset: StrictInt | None = None
    batchSize: StrictInt | None = None
    startMarkers: WireMarkers | None = None
    endMarkers: WireMarkers | None = None
    reset: StrictBool = False


class BatchStart(BatchChunk):
    message_type = BATCH_START


class BatchContinue(BatchChunk):
    message_type = BATCH_CONTINUE


class BatchEnd(Body):
    message_type = BATCH_END

    startMarkers: WireMarkers | None = None
    endMarkers: WireMarkers | None = None
    batchSize: StrictInt | None = Field(default=None, ge=1)


class BatchAck(Body):
    message_type = BATCH_ACK

    receipt: Receipt = Field(default_factory=Receipt)
    nextOffset: StrictInt | None = None
    batchSize: StrictInt | None = None
    startMarkers: WireMarkers | None = None
    endMarkers: WireMarkers | None = None


class BatchEndAck(Body):
    message_type = BATCH_END_ACK

    startMarkers: WireMarkers | None = None
    endMarkers: WireMarkers | None = None


class Feed(Body):
    message_type = FEED

    feed: WireFeed = Field(default_factory=WireFeed)
    startMarkers: WireMarkers | None = None
    endMarkers: WireMarkers | None = None


class FeedAck(Body):
    message_type = FEED_ACK

    receipt: Receipt = Field(default_factory=Receipt)


class WireRange(BaseModel):
    """One range of a range.check: buckets [lo, hi) and the client's summary of them."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    lo: StrictInt = Field(ge=0, le=BUCKETS - 1)
    hi: StrictInt = Field(ge=1, le=BUCKETS)
    count: StrictInt = Field(ge=0)
    hash: StrictStr = Field(pattern=r"^[0-9a-f]{16}$")

    @model_validator(mode="after")
    def _ordered(self) -> WireRange:
        if self.hi <= self.lo:
            raise ValueError("hi must be above lo")
        return self


class RangeCheck(Body):
    message_type = RANGE_CHECK
    ranges: list[WireRange] = Field(min_length=1, max_length=RANGE_CHECK_MAX)


class RangeResult(Body):
    message_type = RANGE_RESULT
    markers: WireMarkers
    ranges: list[dict[str, Any]] = Field(default_factory=list)
    equal: StrictBool = False


class RangeFetch(Body):
    message_type = RANGE_FETCH
    ids: list[StrictStr] = Field(min_length=1, max_length=RANGE_FETCH_MAX)


class RangeDocs(Body):
    message_type = RANGE_DOCS
    feed: WireFeed = Field(default_factory=WireFeed)
    missing: list[StrictStr] = Field(default_factory=list)


class TokenRefresh(Body):
    message_type = TOKEN_REFRESH

    authToken: StrictStr = Field(min_length=1, max_length=4096)


class TokenRefreshAck(Body):
    message_type = TOKEN_REFRESH_ACK

    expires: StrictInt
    scopes: list[StrictStr] = Field(default_factory=list)
    readOnly: StrictBool = False


Message = (
    Connect
    | ConnectAck
    | Error
    | Disconnect
    | BatchStart
    | BatchContinue
    | BatchEnd
    | BatchAck
    | BatchEndAck
    | Feed
    | FeedAck
    | TokenRefresh
    | TokenRefreshAck
    | RangeCheck
    | RangeResult
    | RangeFetch
    | RangeDocs
)

MODELS: dict[str, type[Body]] = {
    model.message_type: model
    for model in (
        Connect,
        ConnectAck,
        Error,
        Disconnect,
        BatchStart,
        BatchContinue,
        BatchEnd,
        BatchAck,
        BatchEndAck,
        Feed,
        FeedAck,
        TokenRefresh,
        TokenRefreshAck,
        RangeCheck,
        RangeResult,
        RangeFetch,
        RangeDocs,
    )
}
MESSAGE_TYPES = frozenset(MODELS)


def _describe(error: ValidationError, prefix: str = "") -> str:
    """The first validation failure, naming its field: `header.id: Field required`."""
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{prefix}{location}: {first['msg']}"


def parse_message(frame: str | bytes) -> Body:
    """Parse one frame into its typed message, or raise DataGateError (see module docstring)."""
    raw = decode_frame(frame)
    return parse_decoded(raw)


def parse_decoded(raw: dict[str, Any]) -> Body:
    """Validate an already decoded frame (a dict with a header dict)."""
    try:
        header = Header.model_validate(raw["header"])
    except ValidationError as error:
        raise DataGateError(
            ErrorCode.INVALID_MESSAGE,
            message_type="header",
            detail=_describe(error, "header."),
        ) from error
    model = MODELS.get(header.messageType)
    if model is None:
        raise DataGateError(ErrorCode.UNKNOWN_MESSAGE_TYPE, message_type=header.messageType)
    body = dict(raw)
    body["header"] = header
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise DataGateError(
            ErrorCode.INVALID_MESSAGE, message_type=header.messageType, detail=_describe(error)
        ) from error


def message_type_of(raw: dict[str, Any]) -> str | None:
    """The messageType a decoded frame claims, if it is a string (for error reports)."""
    value = raw.get("header", {}).get("messageType") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


# --- encoding what the server sends -------------------------------------------------------


def encode(message: dict[str, Any]) -> str:
    """One JSON text frame. Compact separators: feeds are the bulk of the traffic."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


_strict = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class EncodedDocument:
    """A wire document already encoded as JSON text (an object), spliced into frames as is.

    The pull and live feeds build these from the body text the database holds
    (`replication.changes.wire_document`): a document read that way is never decoded and
    encoded again. Whoever makes one vouches that `text` is one valid JSON object that can be
    served (docs/decisions/0013); `encode_served` only splices it.
    """

    doc_id: str
    text: str
    # Where `,"_origin":...` starts in `text`, when it ends the object (0: no `_origin`).
    origin_at: int = 0

    def without_origin(self) -> EncodedDocument:
        """The same document without its `_origin` (a G3 replica's pull: `g3.without_origin`)."""
        if not self.origin_at:
            return self
        return EncodedDocument(self.doc_id, self.text[: self.origin_at] + "}")


# A changeSet slot the spliced documents replace: NUL cannot be in anything else the server
# puts in a frame's header or markers, and JSON always escapes it.
_SLOT = "\x00spliced documents\x00"
_SLOT_TEXT = _strict([_SLOT])


def encode_served(message: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """A frame carrying stored documents, and the (id, reason) of those left out of it.

    Nothing stored may stop a pull or a feed (docs/decisions/0013): a stored document that
    cannot be encoded (a lone surrogate, NaN, written before the door existed) is left out of
    the frame and named, so the caller records DG-5005; the markers still move past it. The
    check is one strict UTF-8 encoding of the frame text; documents are looked at one by one
    only when the whole frame fails.

    A feed whose changeSet holds `EncodedDocument`s is spliced: the rest of the frame is
    encoded once and the documents' texts are joined into it (`_encode_spliced`).
    """
    feed = message.get("feed")
    if isinstance(feed, dict):
        documents = feed.get("changeSet")
        if documents and any(type(doc) is EncodedDocument for doc in documents):
            return _encode_spliced(message, feed, documents)
    try:
        text = _strict(message)
        text.encode("utf-8")
        return text, []
    except (ValueError, UnicodeEncodeError, RecursionError):
        feed = message.get("feed")
        if not isinstance(feed, dict):
            raise
    kept, skipped = served_feed(feed)
    text = _strict({**message, "feed": kept})
    text.encode("utf-8")
    return text, skipped


def _encode_spliced(
    message: dict[str, Any], feed: dict[str, Any], documents: list[Any]
) -> tuple[str, list[tuple[str, str]]]:
    """`encode_served` for a changeSet of `EncodedDocument`s (and plain documents, which a
    screen sent the decoding way: `replication.changes.wire_document`), in their order."""
    texts: list[str] = []
    skipped: list[tuple[str, str]] = []
    for doc in documents:
        if type(doc) is EncodedDocument:
            texts.append(doc.text)
            continue
        reason = unencodable(doc)
        if reason is None:
            texts.append(_strict(doc))
        else:
            skipped.append((printable(str(doc.get("_id", ""))), reason))
    rest, rest_skipped = encode_served({**message, "feed": {**feed, "changeSet": [_SLOT]}})
    text = rest.replace(_SLOT_TEXT, "[" + ",".join(texts) + "]", 1)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Only an id or origin can bring a lone surrogate into an encoded document (its body
        # text passed the screen): leave out those documents, as the plain path does.
        bad: list[tuple[str, str]] = []
        kept = []
        for doc in documents:
            if type(doc) is EncodedDocument and unencodable(doc.text) is not None:
                bad.append((printable(doc.doc_id), "a lone surrogate"))
            else:
                kept.append(doc)
        text, rest_skipped = _encode_spliced(message, feed, kept)
        return text, bad + rest_skipped
    return text, skipped + rest_skipped


def served_feed(feed: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """`feed` without the documents and tombstones that cannot be encoded, and those left out."""
    skipped: list[tuple[str, str]] = []
    change_set = []
    for doc in feed.get("changeSet") or []:
        reason = unencodable(doc)
        if reason is None:
            change_set.append(doc)
        else:
            skipped.append((printable(str(doc.get("_id", ""))), reason))
    tombstones = {}
    for doc_id, stamp in (feed.get("tombstoneMap") or {}).items():
        reason = unencodable(doc_id)
        if reason is None:
            tombstones[doc_id] = stamp
        else:
            skipped.append((printable(doc_id), reason))
    return {**feed, "changeSet": change_set, "tombstoneMap": tombstones}, skipped


def encode_body(body: dict[str, Any]) -> str:
    """A body without header, encoded once so many sessions can share it (see `splice`)."""
    return encode(body)


_header_encode = msgspec.json.Encoder().encode


def encode_header(header: dict[str, Any]) -> str:
    """`encode(header)`, the fast way: msgspec writes a header (strings, integers, None) about
    five times as fast as `json.dumps`. What it refuses (a lone surrogate) `encode` writes."""
    try:
        return _header_encode(header).decode()
    except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError among them
        return encode(header)


def splice(header: dict[str, Any], encoded_body: str) -> str:
    """A frame from a header and a body `encode_body` made: the body's bytes are reused."""
    head = '{"header":' + encode_header(header)
    if encoded_body == "{}":
        return head + "}"
    return head + "," + encoded_body[1:]


__all__ = [
    "BATCH_ACK",
    "BATCH_CONTINUE",
    "BATCH_END",
    "BATCH_END_ACK",
    "BATCH_START",
    "CAPABILITY_LIVE",
    "CAPABILITY_RANGES",
    "CAPABILITY_VIEWS",
    "CONNECT",
    "CONNECT_ACK",
    "DISCONNECT",
    "ERROR",
    "FEED",
    "FEED_ACK",
    "MESSAGE_TYPES",
    "MODELS",
    "RANGE_CHECK",
    "RANGE_DOCS",
    "RANGE_FETCH",
    "RANGE_RESULT",
    "TOKEN_REFRESH",
    "TOKEN_REFRESH_ACK",
    "Body",
    "EncodedDocument",
    "Message",
    "encode",
    "encode_body",
    "encode_served",
    "make_header",
    "parse_message",
    "splice",
]
