"""The envelope every websocket message shares (PROTOCOL.md section 2), for every endpoint.

`decode_frame` turns a text frame into `(header, raw_message)` or raises a DataGateError with
the right code (not JSON, no header). The typed message bodies of each protocol are validated
after this, against the message type the header names.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from replication.protocol.errors import DataGateError, ErrorCode


class Header(BaseModel):
    """A message header. Unknown keys are kept, not refused: newer clients may send more."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: StrictStr = Field(min_length=1, max_length=64)
    messageType: StrictStr = Field(min_length=1, max_length=64)
    transactionId: StrictStr | None = Field(default=None, max_length=64)
    correlationId: StrictStr | None = Field(default=None, max_length=64)
    tenant: StrictStr | None = Field(default=None, max_length=64)
    collection: StrictStr | None = Field(default=None, max_length=64)
    userName: StrictStr | None = Field(default=None, max_length=150)
    timestamp: StrictInt | None = None
    origin: StrictStr | None = Field(default=None, max_length=128)


def decode_frame(text: str | bytes) -> dict[str, Any]:
    """Parse a frame into a JSON object that has a header object, or raise DG-2001/DG-2002."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataGateError(ErrorCode.NOT_JSON, detail=str(exc)[:60]) from exc
    if not isinstance(message, dict) or not isinstance(message.get("header"), dict):
        raise DataGateError(ErrorCode.MISSING_HEADER)
    return message


def make_header(
    *,
    message_type: str,
    origin: str,
    transaction_id: str | None = None,
    correlation_id: str | None = None,
    tenant: str | None = None,
    collection: str | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    """A header for a message this server sends."""
    return {
        "id": str(uuid.uuid4()),
        "transactionId": transaction_id,
        "correlationId": correlation_id,
        "tenant": tenant,
        "collection": collection,
        "userName": user_name,
        "timestamp": time.time_ns() // 1_000_000,
        "messageType": message_type,
        "origin": origin,
    }
