"""The one catalogue of DataGate error codes (docs/errors.md explains each one).

Every error a client, an operator or an HTTP caller can see has a code `DG-NNNN`, a websocket
close code (used when the error is fatal), an HTTP status (used by the HTTP API) and a message
template. The text sent on the wire starts with the code and is at most 123 characters, the
longest reason a websocket close frame can carry.

Ranges: 1xxx authentication, 2xxx framing and protocol, 3xxx access, 4xxx documents and
conflicts, 5xxx flow control and server, 6xxx topics, 7xxx maintenance and operator tools,
8xxx HTTP API, 9xxx the CouchDB replication protocol (couchdb/).
`tests/core/test_errors_catalogue.py` checks every code is unique and documented.

Exception tree:
    DataGateError          any error with a catalogue code
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

MAX_ERROR_TEXT = 123


class CloseCode(IntEnum):
    """Websocket close codes (PROTOCOL.md section 6)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    FRAME_TOO_LARGE = 1009
    INTERNAL = 1011
    MALFORMED = 4400
    NOT_AUTHENTICATED = 4401
    FORBIDDEN = 4403
    CONNECT_TIMEOUT = 4408
    PROTOCOL_VIOLATION = 4409
    TOO_SLOW = 4429
    SERVER_ERROR = 4500


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    close_code: CloseCode
    http_status: int
    template: str


def _spec(code: str, close: CloseCode, http: int, template: str) -> ErrorSpec:
    return ErrorSpec(code, close, http, template)


class ErrorCode(Enum):
    """Every DataGate error. The member value is its `ErrorSpec`."""

    # --- 1xxx authentication ---------------------------------------------------------------
    TOKEN_INVALID = _spec(
        "DG-1001", CloseCode.NOT_AUTHENTICATED, 401, "failed to validate token: {reason}"
    )
    TOKEN_SCOPE = _spec("DG-1002", CloseCode.FORBIDDEN, 403, "token lacks scope {scope!r}")
    USER_MISMATCH = _spec(
        "DG-1003",
        CloseCode.FORBIDDEN,
        403,
        "user {user!r} in the URL or header is not the token's user",
    )
    TOKEN_REFRESH_REFUSED = _spec(
        "DG-1004",
        CloseCode.NOT_AUTHENTICATED,
        401,
        "token refresh refused: {reason}; the session keeps its current token",
    )

    # --- 2xxx framing and protocol ---------------------------------------------------------
    NOT_JSON = _spec("DG-2001", CloseCode.MALFORMED, 400, "frame is not JSON: {detail}")
    MISSING_HEADER = _spec("DG-2002", CloseCode.MALFORMED, 400, "message has no header object")
    UNKNOWN_MESSAGE_TYPE = _spec(
        "DG-2003", CloseCode.MALFORMED, 400, "unknown messageType {message_type!r}"
    )
    INVALID_MESSAGE = _spec("DG-2004", CloseCode.MALFORMED, 400, "invalid {message_type}: {detail}")
    HEADER_MISMATCH = _spec(
        "DG-2005",
        CloseCode.PROTOCOL_VIOLATION,
        400,
        "header {field} {got!r} does not match the session's {expected!r}",
    )
    WRONG_STATE = _spec(
        "DG-2006",
        CloseCode.PROTOCOL_VIOLATION,
        409,
        "{message_type} is not allowed in state {state}",
    )
    FRAME_TOO_LARGE = _spec(
        "DG-2007",
        CloseCode.FRAME_TOO_LARGE,
        413,
        "frame of {size} bytes exceeds the limit of {limit} bytes",
    )
    CONNECT_TIMEOUT = _spec(
        "DG-2008", CloseCode.CONNECT_TIMEOUT, 408, "no connect within {seconds} s"
    )
    RANGES_TOO_LARGE = _spec(
        "DG-2030",
        CloseCode.SERVER_ERROR,
        413,
        "range check unavailable: the collection has more than {limit} rows to filter",
    )
    RANGE_ROUNDS = _spec(
        "DG-2031",
        CloseCode.PROTOCOL_VIOLATION,
        429,
        "range check: more than {limit} {what} in one session",
    )
    JSON_TOO_DEEP = _spec(
        "DG-2009", CloseCode.MALFORMED, 400, "JSON nests too deep to decode: {detail}"
    )

    # --- 3xxx access -----------------------------------------------------------------------
    COLLECTION_NOT_FOUND = _spec(
        "DG-3001", CloseCode.FORBIDDEN, 404, "collection not found: {tenant}/{collection}"
    )
    READ_ONLY = _spec(
        "DG-3002", CloseCode.FORBIDDEN, 403, "user {user!r} may not write to this collection"
    )
    KEY_WRITE_DENIED = _spec(
        "DG-3003", CloseCode.FORBIDDEN, 403, "a key rule denies writing {doc_id!r}"
    )
    KEY_DELETE_DENIED = _spec(
        "DG-3004", CloseCode.FORBIDDEN, 403, "a key rule denies deleting {doc_id!r}"
    )
    ACCESS_WITHDRAWN = _spec(
        "DG-3005",
        CloseCode.FORBIDDEN,
        403,
        "access to {tenant}/{collection} was withdrawn",
    )

    # --- 4xxx documents and conflicts ------------------------------------------------------
    DOCUMENT_NOT_OBJECT = _spec(
        "DG-4001", CloseCode.MALFORMED, 400, "change #{index} is not a JSON object"
    )
    BAD_DOCUMENT_ID = _spec(
        "DG-4002",
        CloseCode.MALFORMED,
        400,
        "_id must be 1-128 characters, no control characters or lone surrogates: {detail}",
    )
    BAD_REVISION = _spec(
        "DG-4003",
        CloseCode.MALFORMED,
        400,
        "_revision of {doc_id!r} must be an integer >= 1, got {value!r}",
    )
    BAD_MODIFIED = _spec(
        "DG-4004",
        CloseCode.MALFORMED,
        400,
        "_modified of {doc_id!r} must be an integer epoch in ms, got {value!r}",
    )
    RESERVED_FIELD = _spec(
        "DG-4005", CloseCode.MALFORMED, 400, "{doc_id!r} uses reserved field {field!r}"
    )
    CLOCK_SKEW = _spec(
        "DG-4006",
        CloseCode.MALFORMED,
        400,
        "{doc_id!r} is stamped {ahead_ms} ms in the future (limit {limit_ms} ms)",
    )
    BAD_TOMBSTONE = _spec(
        "DG-4007",
        CloseCode.MALFORMED,
        400,
        "tombstone {doc_id!r} needs an integer delete time in ms, got {value!r}",
    )
    BAD_ORIGIN = _spec(
        "DG-4008",
        CloseCode.MALFORMED,
        400,
        "_origin of {doc_id!r} must be a string of at most 128 characters, no control "
        "characters or lone surrogates: {detail}",
    )
    REVISION_CONFLICT = _spec(
        "DG-4009",
        CloseCode.PROTOCOL_VIOLATION,
        409,
        "{doc_id!r} is at revision {actual}, not the expected {expected}",
    )

    BAD_TEXT = _spec(
        "DG-4010", CloseCode.MALFORMED, 400, "{doc_id!r} holds {what}: not storable text"
    )
    DOCUMENT_TOO_DEEP = _spec(
        "DG-4011", CloseCode.MALFORMED, 400, "{doc_id!r} nests deeper than {limit} levels"
    )
    BAD_NUMBER = _spec(
        "DG-4012", CloseCode.MALFORMED, 400, "{doc_id!r} holds {what}, which JSON cannot carry"
    )
    DOCUMENT_TOO_LARGE = _spec(
        "DG-4013",
        CloseCode.MALFORMED,
        413,
        "{doc_id!r} encodes to {size} bytes, over the document limit of {limit}",
    )

    # 41xx: data views and their Mango selectors (replication/protocol/mango.py).
    SELECTOR_INVALID = _spec(
        "DG-4101", CloseCode.MALFORMED, 400, "bad selector at {where}: {detail}"
    )
    SELECTOR_UNKNOWN_OPERATOR = _spec(
        "DG-4102", CloseCode.MALFORMED, 400, "unknown selector operator {operator!r} at {where}"
    )
    SELECTOR_TOO_COMPLEX = _spec(
        "DG-4103", CloseCode.MALFORMED, 400, "selector too complex at {where}: {detail}"
    )
    SELECTOR_UNKNOWN_PARAMETER = _spec(
        "DG-4104", CloseCode.MALFORMED, 400, "unknown selector parameter {{{name}}} at {where}"
    )
    VIEW_NOT_FOUND = _spec(
        "DG-4105", CloseCode.FORBIDDEN, 404, "view not found: {tenant}/{collection}/{view}"
    )
    VIEW_EXISTS = _spec(
        "DG-4106", CloseCode.PROTOCOL_VIOLATION, 409, "view {tenant}/{collection}/{view} exists"
    )
    VIEW_INVALID = _spec("DG-4107", CloseCode.MALFORMED, 400, "bad view {view!r}: {detail}")
    VIEW_ADMIN_DENIED = _spec(
        "DG-4108", CloseCode.FORBIDDEN, 403, "user {user!r} may not manage views of {collection}"
    )

    # --- 5xxx flow control and server ------------------------------------------------------
    FEED_ACK_TIMEOUT = _spec(
        "DG-5001",
        CloseCode.TOO_SLOW,
        429,
        "no feed.ack for {seconds} s with {outstanding} feeds outstanding",
    )
    RATE_LIMITED = _spec("DG-5002", CloseCode.TOO_SLOW, 429, "rate limited: {detail}")
    INTERNAL = _spec("DG-5003", CloseCode.SERVER_ERROR, 500, "internal error ({reference})")
    SHUTTING_DOWN = _spec("DG-5004", CloseCode.GOING_AWAY, 503, "server is shutting down")
    UNSERVABLE_SKIPPED = _spec(
        "DG-5005",
        CloseCode.SERVER_ERROR,
        500,
        "stored {doc_id!r} cannot be encoded ({reason}): left out; run datagate_verify",
    )

    # --- 6xxx topics -----------------------------------------------------------------------
    TOPIC_TENANT_NOT_FOUND = _spec(
        "DG-6001", CloseCode.FORBIDDEN, 404, "tenant not found: {tenant}"
    )
    TOPIC_NOT_FOUND = _spec("DG-6002", CloseCode.FORBIDDEN, 404, "topic not found: {topic}")
    TOPIC_EXISTS = _spec("DG-6003", CloseCode.PROTOCOL_VIOLATION, 409, "topic {topic!r} exists")
    TOPIC_CREATE_DENIED = _spec(
        "DG-6004", CloseCode.FORBIDDEN, 403, "user {user!r} may not create {scope} topics"
    )
    TOPIC_DELETE_DENIED = _spec(
        "DG-6005", CloseCode.FORBIDDEN, 403, "user {user!r} may not delete topic {topic!r}"
    )
    TOPIC_PUBLISH_DENIED = _spec(
        "DG-6006", CloseCode.FORBIDDEN, 403, "user {user!r} may not publish to topic {topic!r}"
    )
    COMMIT_REGRESSION = _spec(
        "DG-6007",
        CloseCode.PROTOCOL_VIOLATION,
        409,
        "commit {offset} on {topic!r} is behind the committed offset {committed}",
    )
    COMMIT_BEYOND_END = _spec(
        "DG-6008",
        CloseCode.PROTOCOL_VIOLATION,
        409,
        "commit {offset} on {topic!r} is past its last offset {last}",
    )
    ALREADY_SUBSCRIBED = _spec(
        "DG-6009", CloseCode.PROTOCOL_VIOLATION, 409, "already subscribed to {topic!r}"
    )
    NOT_SUBSCRIBED = _spec(
        "DG-6010", CloseCode.PROTOCOL_VIOLATION, 409, "not subscribed to {topic!r}"
    )

    # --- 7xxx maintenance and operator tools -----------------------------------------------
    # 70xx: tombstone GC, journal retention, export and import (docs/maintenance.md).
    PURGED_DELETE = _spec(
        "DG-7001",
        CloseCode.PROTOCOL_VIOLATION,
        410,
        "{doc_id!r} stamped {modified} is at or before the purge horizon {horizon}: "
        "treated as deleted",
    )
    MAINTENANCE_FAILED = _spec(
        "DG-7002", CloseCode.SERVER_ERROR, 500, "maintenance job {job} failed: {detail}"
    )
    EXPORT_INVALID = _spec("DG-7003", CloseCode.MALFORMED, 400, "export line {line}: {detail}")
    # 71xx: what `datagate_verify` finds wrong in a collection.
    SEQ_DUPLICATE = _spec(
        "DG-7101",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: seq {seq} is used by {count} rows ({rows})",
    )
    SEQ_OUT_OF_RANGE = _spec(
        "DG-7102",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: {table} {doc_id!r} has seq {seq}, outside 1..{last_seq}",
    )
    LIVE_AND_TOMBSTONED = _spec(
        "DG-7103",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: {doc_id!r} is both a live document and a tombstone",
    )
    JOURNAL_MISSING = _spec(
        "DG-7104",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: {table} {doc_id!r} at seq {seq} has no journal entry",
    )
    JOURNAL_MISMATCH = _spec(
        "DG-7105",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: journal seq {seq} records {journal}, the {table} holds {stored}",
    )
    MARKER_AHEAD = _spec(
        "DG-7106",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: {field} {value} is above the counter last_seq {last_seq}",
    )
    RANGES_MISMATCH = _spec(
        "DG-7107",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: range bucket {bucket} holds {stored}, its rows sum to {actual}",
    )

    UNSERVABLE_STORED = _spec(
        "DG-7108",
        CloseCode.SERVER_ERROR,
        500,
        "{collection}: document {doc_id!r} cannot be served ({reason}); see datagate_quarantine",
    )

    # --- 72xx collection management (replication/collection_services.py) ---------------
    COLLECTION_EXISTS = _spec(
        "DG-7201", CloseCode.PROTOCOL_VIOLATION, 409, "collection {tenant}/{collection} exists"
    )
    COLLECTION_CREATE_DENIED = _spec(
        "DG-7202",
        CloseCode.FORBIDDEN,
        403,
        "{user} may not create collections in {tenant} (admins and writers may)",
    )
    COLLECTION_ADMIN_DENIED = _spec(
        "DG-7203",
        CloseCode.FORBIDDEN,
        403,
        "{user} may not {action} {tenant}/{collection} (needs admin or administer)",
    )
    COLLECTION_BAD_SETTING = _spec(
        "DG-7204", CloseCode.MALFORMED, 400, "bad collection setting {name}: {detail}"
    )
    COLLECTION_DELETE_UNCONFIRMED = _spec(
        "DG-7205",
        CloseCode.MALFORMED,
        400,
        "deleting {tenant}/{collection} needs its name typed again as confirmation",
    )

    # --- 8xxx HTTP API ---------------------------------------------------------------------
    NOT_FOUND = _spec("DG-8001", CloseCode.MALFORMED, 404, "not found: {what}")
    METHOD_NOT_ALLOWED = _spec(
        "DG-8002", CloseCode.MALFORMED, 405, "method {method} is not allowed here"
    )
    BAD_PARAMETER = _spec("DG-8003", CloseCode.MALFORMED, 400, "bad parameter {name}: {detail}")
    BAD_BODY = _spec("DG-8004", CloseCode.MALFORMED, 400, "bad request body: {detail}")
    UNSUPPORTED_MEDIA_TYPE = _spec(
        "DG-8005", CloseCode.MALFORMED, 415, "unsupported media type {media_type!r}; send JSON"
    )
    NOT_ACCEPTABLE = _spec(
        "DG-8006", CloseCode.MALFORMED, 406, "cannot answer in the requested media type"
    )
    SEARCH_NOT_ENABLED = _spec(
        "DG-8007",
        CloseCode.MALFORMED,
        409,
        "search is not enabled for {tenant}/{collection}: choose fields to index",
    )
    GRAPHQL_INVALID = _spec("DG-8008", CloseCode.MALFORMED, 400, "bad GraphQL request: {detail}")
    GRAPHQL_TOO_COMPLEX = _spec(
        "DG-8009", CloseCode.MALFORMED, 400, "GraphQL query over a limit: {detail}"
    )

    # --- 9xxx CouchDB replication protocol (/couchdb/, docs/couchdb.md) --------------------
    COUCHDB_START_OVER = _spec(
        "DG-9001",
        CloseCode.PROTOCOL_VIOLATION,
        400,
        "since {since} is behind the purge horizon or from another timeline ({reason}): start over",
    )
    COUCHDB_ATTACHMENTS = _spec(
        "DG-9002", CloseCode.MALFORMED, 415, "{doc_id!r}: attachments are not supported"
    )
    COUCHDB_UNSUPPORTED = _spec("DG-9003", CloseCode.MALFORMED, 400, "not supported: {what}")
    COUCHDB_FEED_ENDED = _spec(
        "DG-9004", CloseCode.NOT_AUTHENTICATED, 401, "live feed ended: {reason}"
    )

    @property
    def code(self) -> str:
        return self.value.code

    @property
    def close_code(self) -> CloseCode:
        return self.value.close_code

    @property
    def http_status(self) -> int:
        return self.value.http_status

    def text(self, **params: Any) -> str:
        """The wire text: the code, then the filled template, cut to 123 characters."""
        try:
            body = self.value.template.format(**params)
        except (KeyError, IndexError):
            body = self.value.template
        full = f"{self.code} {body}"
        try:
            full.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from the input: escape it, or no frame
            full = full.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(full) > MAX_ERROR_TEXT:
            full = full[: MAX_ERROR_TEXT - 1] + "…"
        return full


class DataGateError(Exception):
    """An error with a catalogue code. `fatal` errors close the websocket with `close_code`."""

    def __init__(self, error: ErrorCode, *, fatal: bool = False, **params: Any) -> None:
        self.error = error
        self.fatal = fatal
        self.params = params
        super().__init__(error.text(**params))

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def close_code(self) -> CloseCode:
        return self.error.close_code

    @property
    def text(self) -> str:
        return str(self)


def fatal_close_code(error: DataGateError, *, before_connect_ack: bool) -> int:
    """The close code for a fatal error (PROTOCOL.md section 2).

    Before ConnectAck anything but a valid Connect is a protocol violation (4409); only a frame
    that is not JSON at all (or nests too deep to decode) closes with 4400. Otherwise each code
    closes with its own.
    """
    if (
        before_connect_ack
        and error.close_code is CloseCode.MALFORMED
        and error.error not in (ErrorCode.NOT_JSON, ErrorCode.JSON_TOO_DEEP)
    ):
        return int(CloseCode.PROTOCOL_VIOLATION)
    return int(error.close_code)


def error_by_code(code: str) -> ErrorCode:
    for member in ErrorCode:
        if member.code == code:
            return member
    raise KeyError(code)
