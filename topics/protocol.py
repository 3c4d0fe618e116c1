"""The topics protocol (docs/protocol.md section 7) as pure code: no Django, no I/O.

Three parts, each driven by the thin consumer in `topics/consumers.py`:

- Message schemas: every client message `datagate.topic.*` is validated once, at the edge,
  into a typed pydantic model; every failure maps to a catalogue error code.
- `TopicSession`, the session state machine. States: OPEN (socket accepted, no connect yet),
  CONNECTED (connect.ack sent) and CLOSED. `receive(text)` turns a frame into an `Inbound`:
  the typed message, or the error to send and whether it is fatal. The rules (PROTOCOL.md
  section 2): before connect.ack anything but a valid connect is fatal (close 4400 for a frame
  that is not JSON, 4409 for anything else); after it, a frame
  that is not JSON, has no header, has an unknown type or fails validation is a non-fatal
  error and nothing of it is applied, while a header naming another tenant, user or
  transaction, or a second connect, is fatal (4409).
- `SubscriptionWindow`, the flow control of one subscription: what may be read and sent
  next. The next batch goes out once `commit_share` of the previous batch is committed, and
  it is never larger than what keeps the sent-but-uncommitted messages within `batch_size`.
  So the server holds (and the socket carries) at most one batch window per subscription,
  however slow the consumer and however fast the publishers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from core.envelope import Header, decode_frame, make_header
from core.errors import DataGateError, ErrorCode

PREFIX = "datagate.topic."
CONNECT = PREFIX + "connect"
CONNECT_ACK = PREFIX + "connect.ack"
ERROR = PREFIX + "error"
DISCONNECT = PREFIX + "disconnect"
LIST = PREFIX + "list"
LIST_ACK = PREFIX + "list.ack"
CREATE = PREFIX + "create"
CREATE_ACK = PREFIX + "create.ack"
DELETE = PREFIX + "delete"
DELETE_ACK = PREFIX + "delete.ack"
PUBLISH = PREFIX + "publish"
PUBLISH_ACK = PREFIX + "publish.ack"
SUBSCRIBE = PREFIX + "subscribe"
SUBSCRIBE_ACK = PREFIX + "subscribe.ack"
MESSAGES = PREFIX + "messages"
COMMIT = PREFIX + "commit"
COMMIT_ACK = PREFIX + "commit.ack"
UNSUBSCRIBE = PREFIX + "unsubscribe"
UNSUBSCRIBE_ACK = PREFIX + "unsubscribe.ack"

# The same rule as accounts.models.SLUG_VALIDATOR (this module imports no Django).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TopicName = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
MAX_BATCH_SIZE = 10_000


class _Body(BaseModel):
    # Unknown keys are ignored, not refused: newer clients may send more.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Connect(_Body):
    authToken: Any = None  # checked by the token validator, so "no token" gets DG-1001
    device: StrictStr = Field(min_length=1, max_length=128)
    replicaName: StrictStr | None = Field(default=None, max_length=200)


class ListTopics(_Body):
    pass


class Create(_Body):
    topic: TopicName
    scope: Literal["global", "local"] = "global"
    pageSize: StrictInt | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    retentionDays: StrictInt | None = Field(default=None, ge=1)
    retentionCount: StrictInt | None = Field(default=None, ge=1)


class Delete(_Body):
    topic: TopicName


class PublishItem(_Body):
    messageId: StrictStr = Field(min_length=1, max_length=128)
    payload: Any = None


class Publish(_Body):
    topic: TopicName
    messages: list[PublishItem] = Field(min_length=1)


class Range(_Body):
    start: StrictInt = Field(ge=1)
    end: StrictInt | None = Field(default=None, ge=1)


class Subscribe(_Body):
    topic: TopicName
    start_from: Literal["beginning", "latest", "committed"] | Range = Field(
        default="committed", alias="from"
    )
    batchSize: StrictInt | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)


class Commit(_Body):
    topic: TopicName
    offset: StrictInt = Field(ge=0)


class Unsubscribe(_Body):
    topic: TopicName


class Disconnect(_Body):
    pass


SCHEMAS: dict[str, type[_Body]] = {
    CONNECT: Connect,
    LIST: ListTopics,
    CREATE: Create,
    DELETE: Delete,
    PUBLISH: Publish,
    SUBSCRIBE: Subscribe,
    COMMIT: Commit,
    UNSUBSCRIBE: Unsubscribe,
    DISCONNECT: Disconnect,
}


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


class State(Enum):
    OPEN = "OPEN"
    CONNECTED = "CONNECTED"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class Inbound:
    """One received frame: its typed message, or the error to answer it with."""

    message_type: str | None
    header: Header | None = None
    message: _Body | None = None
    error: DataGateError | None = None
    correlation_id: str | None = None


@dataclass
class TopicSession:
    """The state of one topics connection (see the module docstring for the rules)."""

    tenant: str
    server_id: str
    max_publish: int = 1000
    state: State = State.OPEN
    user_name: str | None = None
    transaction_id: str | None = None

    def receive(self, text: str | bytes) -> Inbound:
        opening = self.state is State.OPEN
        try:
            raw = decode_frame(text)
        except DataGateError as exc:
            return Inbound(None, error=DataGateError(exc.error, fatal=opening, **exc.params))
        raw_header = raw["header"]
        correlation = raw_header.get("id") if isinstance(raw_header.get("id"), str) else None
        try:
            header = Header.model_validate(raw_header)
        except ValidationError as exc:
            error = DataGateError(
                ErrorCode.INVALID_MESSAGE,
                fatal=opening,
                message_type="header",
                detail=_describe(exc),
            )
            return Inbound(None, error=error, correlation_id=correlation)
        message_type = header.messageType
        schema = SCHEMAS.get(message_type)
        if schema is None:
            error = DataGateError(
                ErrorCode.UNKNOWN_MESSAGE_TYPE, fatal=opening, message_type=message_type
            )
            return Inbound(message_type, header, error=error, correlation_id=header.id)
        mismatch = self._header_mismatch(header)
        if mismatch is not None:
            return Inbound(message_type, header, error=mismatch, correlation_id=header.id)
        if (message_type == CONNECT) != opening or self.state is State.CLOSED:
            error = DataGateError(
                ErrorCode.WRONG_STATE,
                fatal=True,
                message_type=message_type,
                state=self.state.value,
            )
            return Inbound(message_type, header, error=error, correlation_id=header.id)
        body = {k: v for k, v in raw.items() if k != "header"}
        try:
            message = schema.model_validate(body)
        except ValidationError as exc:
            error = DataGateError(
                ErrorCode.INVALID_MESSAGE,
                fatal=opening,
                message_type=message_type,
                detail=_describe(exc),
            )
            return Inbound(message_type, header, error=error, correlation_id=header.id)
        if isinstance(message, Publish) and len(message.messages) > self.max_publish:
            error = DataGateError(
                ErrorCode.INVALID_MESSAGE,
                message_type=message_type,
                detail=f"messages: at most {self.max_publish} per publish",
            )
            return Inbound(message_type, header, error=error, correlation_id=header.id)
        return Inbound(message_type, header, message, correlation_id=header.id)

    def _header_mismatch(self, header: Header) -> DataGateError | None:
        expected = {
            "tenant": self.tenant,
            "userName": self.user_name,
            "transactionId": self.transaction_id,
        }
        for name, want in expected.items():
            got = getattr(header, name)
            if want is not None and got is not None and got != want:
                return DataGateError(
                    ErrorCode.HEADER_MISMATCH, fatal=True, field=name, got=got, expected=want
                )
        return None

    def connected(self, *, user_name: str, transaction_id: str) -> None:
        self.state = State.CONNECTED
        self.user_name = user_name
        self.transaction_id = transaction_id

    def close(self) -> None:
        self.state = State.CLOSED

    def outbound(
        self, message_type: str, *, correlation_id: str | None = None, **body: Any
    ) -> dict[str, Any]:
        """A server message of this session, header first."""
        header = make_header(
            message_type=message_type,
            origin=self.server_id,
            transaction_id=self.transaction_id,
            correlation_id=correlation_id,
            tenant=self.tenant,
            user_name=self.user_name,
        )
        return {"header": header, **body}

    def error_message(
        self, error: DataGateError, *, correlation_id: str | None = None, topic: str = ""
    ) -> dict[str, Any]:
        extra = {"topic": topic} if topic else {}
        return self.outbound(
            ERROR,
            correlation_id=correlation_id,
            error=error.text,
            code=error.code,
            fatal=error.fatal,
            **extra,
        )


@dataclass
class SubscriptionWindow:
    """Flow control of one subscription, in offsets (pure; see the module docstring).

    `next_offset` is the next offset to read; `floor` is the offset at or below which nothing
    counts as outstanding: where the subscription started, raised by every commit the client
    sends on it (a refused regression too: the client has processed those messages);
    `known_last` is the topic's last offset as last heard (a bell, a poll or a read).
    """

    topic: str
    topic_id: int
    batch_size: int
    commit_share: float
    next_offset: int
    floor: int
    known_last: int
    end: int | None = None
    sent_upto: int = 0
    batch_first: int = 0
    batch_count: int = 0
    finished: bool = False
    batches_sent: int = field(default=0)
    # Set when a bell or a poll says the topic is gone: the next pump checks the database.
    maybe_deleted: bool = False

    def __post_init__(self) -> None:
        self.sent_upto = max(self.sent_upto, self.next_offset - 1)

    @property
    def outstanding(self) -> int:
        """Sent and not yet committed: what the window holds now."""
        return max(0, self.sent_upto - self.floor)

    def committed(self, offset: int) -> None:
        self.floor = max(self.floor, offset)
        if offset >= self.next_offset:  # the client is past what it was sent: skip there
            self.next_offset = offset + 1
            self.sent_upto = max(self.sent_upto, offset)

    def heard(self, last_offset: int) -> None:
        self.known_last = max(self.known_last, last_offset)

    def previous_batch_released(self) -> bool:
        if self.batch_count == 0:
            return True
        needed = self.batch_first - 1 + math.ceil(self.commit_share * self.batch_count)
        return self.floor >= needed

    def read_limit(self) -> int:
        """How many messages to read and send now (0: nothing, or wait for commits)."""
        if self.finished:
            return 0
        if self.end is not None and self.next_offset > self.end:
            return 1  # nothing left in the range: one (empty) read ends it with `final`
        if self.known_last < self.next_offset:
            return 0
        if not self.previous_batch_released():
            return 0
        limit = self.batch_size - self.outstanding
        if self.end is not None:
            limit = min(limit, self.end - self.next_offset + 1)
        return max(0, limit)

    def delivered(self, offsets: list[int], last_offset: int) -> None:
        """Record a batch read (and sent) starting at `next_offset`."""
        self.heard(last_offset)
        if offsets:
            # Offsets below the first one read no longer exist (retention): none outstanding.
            self.floor = max(self.floor, offsets[0] - 1)
            self.batch_first = offsets[0]
            self.batch_count = len(offsets)
            self.sent_upto = offsets[-1]
            self.next_offset = offsets[-1] + 1
            self.batches_sent += 1
        else:
            # Nothing from next_offset on (up to `end`) exists: skip to the topic's end.
            self.next_offset = max(self.next_offset, last_offset + 1)
        if self.end is not None and (self.next_offset > self.end or last_offset >= self.end):
            self.finished = self.next_offset > self.end or not offsets
