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

import msgspec
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from core.errors import DataGateError, ErrorCode


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


# Keys that carry documents or topic payloads: the door checks each of those on its own, so
# that one bad document is rejected in the receipt and the rest of the chunk applies.
PAYLOAD_KEYS = ("feed", "messages")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def decode_frame(text: str | bytes) -> dict[str, Any]:
    """Parse a frame into a JSON object that has a header object, or raise DG-2001/DG-2002.

    Nesting too deep for the decoder is DG-2009, never a RecursionError. The frame's own text
    outside documents and payloads (the header, a connect's token, message ids) must be text
    a frame can carry back: a lone surrogate or NUL there is DG-2004.

    The fast way when it can be: msgspec decodes a frame about twice as fast as `json.loads`,
    into the same plain values (dict, list, str, int, float, bool, None). It refuses more than
    `json.loads` does: `NaN` and `Infinity`, numbers out of a double's range (`1e999`), escaped
    lone surrogates, integers of 4,300 digits and more, frames that are not UTF-8, nesting past
    its own limit. Whatever it refuses is decoded again by `json.loads`, so every frame gets
    exactly the value, or the error, it always got: the door then refuses `NaN` in its document
    with DG-4012, and a frame `json.loads` cannot read is DG-2001 as before. A frame msgspec
    took holds no lone surrogate, so the envelope check can only find a NUL or nesting too deep
    for the encoder there, and a frame without `\\u0000` and with few brackets has neither: it
    is skipped for those (every feed.ack). tests/replication/test_fast_decode.py compares all
    this with `json.loads` and the full check on generated frames.
    """
    checked = False
    try:
        message = _fast_loads(text)
        checked = _plainly_clean(text)
    except (ValueError, RecursionError):  # msgspec.DecodeError and UnicodeError among them
        try:
            message = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataGateError(ErrorCode.NOT_JSON, detail=str(exc)[:60]) from exc
        except RecursionError:
            raise DataGateError(ErrorCode.JSON_TOO_DEEP, detail="the frame") from None
    if not isinstance(message, dict) or not isinstance(message.get("header"), dict):
        raise DataGateError(ErrorCode.MISSING_HEADER)
    if not checked:
        _envelope_check(message)
    return message


_fast_loads = msgspec.json.Decoder().decode

# A frame with fewer opening brackets than this is nested less deep, far from any limit.
_SHALLOW = 64


def _plainly_clean(text: str | bytes) -> bool:
    """True when a frame msgspec decoded needs no envelope check: no NUL can be in it (JSON
    allows none raw in a string, and there is no `\\u0000`) and it is shallow."""
    if isinstance(text, str):
        return "\\u0000" not in text and text.count("{") + text.count("[") < _SHALLOW
    return b"\\u0000" not in text and text.count(b"{") + text.count(b"[") < _SHALLOW


def _envelope_check(message: dict[str, Any]) -> None:
    rest = message
    if any(key in message for key in PAYLOAD_KEYS):
        rest = {key: value for key, value in message.items() if key not in PAYLOAD_KEYS}
    try:
        envelope = _encode(rest)
        envelope.encode("utf-8")
    except RecursionError:
        raise DataGateError(ErrorCode.JSON_TOO_DEEP, detail="the header") from None
    except (UnicodeEncodeError, ValueError):
        detail = "a lone surrogate outside the documents"
        raise DataGateError(
            ErrorCode.INVALID_MESSAGE, message_type="frame", detail=detail
        ) from None
    if "\\u0000" in envelope:
        detail = "NUL outside the documents"
        raise DataGateError(ErrorCode.INVALID_MESSAGE, message_type="frame", detail=detail)


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
