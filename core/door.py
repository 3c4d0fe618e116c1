"""The one door every document passes before it is stored (docs/errors.md, "Bad input").

The websocket push, the HTTP API, the console form, `datagate_import` and topics payloads all
come through `document_text` (via `replication.changes.parse_document`, or directly for topic
payloads). It refuses what could not be stored and served back faithfully on both backends:

- text that is not valid Unicode: a lone surrogate (JSON allows `"\\ud800"`; UTF-8 cannot
  carry it, so the frame that serves it back could never be encoded), and NUL (PostgreSQL's
  jsonb refuses `\\u0000`): DG-4010, in values and in field names;
- nesting deeper than `DATAGATE_MAX_DOCUMENT_DEPTH` levels: DG-4011;
- numbers JSON cannot carry (NaN, Infinity, `1e999` which decodes to Infinity) and values
  that are not JSON at all: DG-4012. Integers of any size JSON's grammar allows are kept
  exactly (both backends and the encoders round-trip them; see docs/errors.md);
- a document whose encoding would not fit in a frame: DG-4013.

Ids and `_origin` follow `id_check`: 1-128 characters (an origin may be empty), no control
characters, no NUL, no lone surrogates (DG-4002 / DG-4008).

Cost: one C-speed encoding of the body (which the caller then stores, so the storage layer
does not encode it again), one strict UTF-8 encoding of that text, and two `str.count` calls.
The exact per-node walks run only when those screens cannot clear a document: a `\\u0000` in
the text, or more brackets than the depth limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from core.errors import DataGateError, ErrorCode

ID_MAX_LENGTH = 128
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
# What a feed frame holds besides one document's fields: the header, the meta fields (an id
# and an origin of 128 characters at up to 4 bytes each) and the feed's own keys.
FRAME_RESERVE_BYTES = 4096

# C0 and C1 control characters (NUL among them), DEL, and UTF-16 surrogates.
_BAD_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """The door's limits: nesting levels (the body object is level 1) and encoded bytes."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES - FRAME_RESERVE_BYTES


DEFAULT_LIMITS = DoorLimits()


def limits_from_settings() -> DoorLimits:
    """The limits the running server uses (`DATAGATE_MAX_DOCUMENT_DEPTH`, the frame limit)."""
    # Not at module top: replication/protocol imports this module and imports no Django.
    from django.conf import settings

    knobs = settings.DATAGATE
    frame = int(knobs["MAX_FRAME_BYTES"])
    return DoorLimits(
        max_depth=int(knobs["MAX_DOCUMENT_DEPTH"]),
        max_bytes=max(frame - FRAME_RESERVE_BYTES, frame // 2),
    )


def printable(text: str, limit: int = ID_MAX_LENGTH) -> str:
    """`text` cut to `limit`, with what cannot travel in a frame escaped (receipts, errors)."""
    cut = text[:limit]
    if _SURROGATES.search(cut) is None:
        return cut
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


_SURROGATES = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """`value` with NUL and lone surrogates in its strings as U+FFFD: for what the server
    records about bad input (error events), which both backends must be able to store."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


def id_check(raw: object, *, origin: bool = False, doc_id: str = "") -> str:
    """`raw` if it is a valid document id (or `_origin`); else raise DG-4002 (DG-4008)."""
    if origin:
        if not isinstance(raw, str):
            detail = f"got {type(raw).__name__}"
            raise DataGateError(ErrorCode.BAD_ORIGIN, doc_id=doc_id, detail=detail)
        if len(raw) > ID_MAX_LENGTH:
            detail = f"{len(raw)} characters"
            raise DataGateError(ErrorCode.BAD_ORIGIN, doc_id=doc_id, detail=detail)
        if _BAD_ID_CHARS.search(raw) is not None:
            detail = "control character or lone surrogate"
            raise DataGateError(ErrorCode.BAD_ORIGIN, doc_id=doc_id, detail=detail)
        return raw
    if not isinstance(raw, str):
        raise DataGateError(ErrorCode.BAD_DOCUMENT_ID, detail=f"got {type(raw).__name__}")
    if not raw:
        raise DataGateError(ErrorCode.BAD_DOCUMENT_ID, detail="empty")
    if len(raw) > ID_MAX_LENGTH:
        raise DataGateError(ErrorCode.BAD_DOCUMENT_ID, detail=f"{len(raw)} characters")
    found = _BAD_ID_CHARS.search(raw)
    if found is not None:
        detail = f"U+{ord(found.group()):04X} at {found.start()}"
        raise DataGateError(ErrorCode.BAD_DOCUMENT_ID, detail=detail)
    return raw


def document_text(
    body: Mapping[str, Any] | Any,
    *,
    doc_id: str,
    limits: DoorLimits = DEFAULT_LIMITS,
    json_values: bool = False,
) -> str:
    """The compact JSON text of `body` if it may be stored; else raise its DG-401x error.

    `body` is a document's fields (without the meta fields) or a topic message's payload.
    `json_values`: the caller vouches that `body` came out of a JSON decoder (a frame), so
    it holds only dict (with str keys), list, str, int, float, bool and None; such a body
    that is plainly fine takes `_fast_text`.
    """
    if json_values:
        fast = _fast_text(body, limits)
        if fast is not None:
            return fast
    try:
        text = _encode(body)
    except ValueError:  # NaN or Infinity (allow_nan=False); circular is impossible from JSON
        raise DataGateError(ErrorCode.BAD_NUMBER, doc_id=doc_id, what="NaN or Infinity") from None
    except TypeError as exc:
        what = str(exc).split(" is not")[0][:40] or "a value"
        raise DataGateError(ErrorCode.BAD_NUMBER, doc_id=doc_id, what=what) from None
    except RecursionError:
        raise DataGateError(
            ErrorCode.DOCUMENT_TOO_DEEP, doc_id=doc_id, limit=limits.max_depth
        ) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise DataGateError(ErrorCode.BAD_TEXT, doc_id=doc_id, what="a lone surrogate") from None
    if "\\u0000" in text and _holds_nul(body):
        raise DataGateError(ErrorCode.BAD_TEXT, doc_id=doc_id, what="NUL (U+0000)")
    if size > limits.max_bytes:
        raise DataGateError(
            ErrorCode.DOCUMENT_TOO_LARGE, doc_id=doc_id, size=size, limit=limits.max_bytes
        )
    if text.count("{") + text.count("[") > limits.max_depth and too_deep(body, limits.max_depth):
        raise DataGateError(ErrorCode.DOCUMENT_TOO_DEEP, doc_id=doc_id, limit=limits.max_depth)
    return text


_fast_encode = msgspec.json.Encoder().encode


def _fast_text(body: Any, limits: DoorLimits) -> str | None:
    """msgspec's JSON text of a JSON-decoded `body` when the door would plainly take it, or
    None: then `document_text`'s own checks decide, exactly as for any other body.

    msgspec encodes about three times as fast as `json`'s encoder (a tenth of a pushing
    server's CPU went to that encoding, issue 21). What it does differently never gets past
    the screens below, so a body this takes is one the exact path takes too:

    - NaN and Infinity come out as `null`: any `null` in the text goes the exact way;
    - a lone surrogate raises (`UnicodeEncodeError`), and so does anything it cannot encode;
    - floats are written shorter (`1e16`, not `1e+16`), never more than 5 characters for 3,
      so a text within half the size limit is within the limit on the exact path too;
    - NUL (`\\u0000`) and more brackets than the depth limit go the exact way (its walks).

    Sets, tuples, bytes, dates and non-str keys, which msgspec encodes and `json` refuses,
    are no concern: a JSON decoder makes none of them (hence `json_values`).
    """
    try:
        data = _fast_encode(body)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return None
    if len(data) > limits.max_bytes // 2:
        return None
    # The screens run on the text, not the bytes: `in` on bytes took twice as long (issue 21).
    text = data.decode("utf-8")
    if "null" in text or "\\u0000" in text or text.count("{") + text.count("[") > limits.max_depth:
        return None
    return text


def too_deep(value: Any, max_depth: int) -> bool:
    """Whether `value` nests more than `max_depth` objects/arrays (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _holds_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and "\x00" in key:
                    return True
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)
    return False


def door_refusal(body: Any, *, max_depth: int = DEFAULT_MAX_DEPTH) -> str | None:
    """The code the door would refuse a stored body with (size aside), or None.

    `datagate_verify` reports such rows (DG-7108): written before the door existed, or by hand.
    """
    try:
        document_text(body, doc_id="", limits=DoorLimits(max_depth, 1 << 62))
    except DataGateError as error:
        return error.code
    return None


def unencodable(value: Any) -> str | None:
    """Why `value` cannot go out in a frame (a short reason), or None if it can.

    Only what breaks the encoding: a lone surrogate (no UTF-8 for it), NaN or Infinity (not
    JSON), nesting too deep for the encoder. NUL and deep-but-encodable nesting do go out.
    """
    try:
        _encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate"
    except ValueError:
        return "NaN or Infinity"
    except RecursionError:
        return "nesting too deep"
    except TypeError:
        return "a value that is not JSON"
    return None


def display_json(value: Any, *, indent: int | None = None) -> str:
    """JSON text for people (the console): unencodable text shown as `\\ud800` escapes."""
    try:
        text = json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True)
        text.encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError, TypeError):
        try:
            return json.dumps(value, indent=indent, ensure_ascii=True, sort_keys=True)
        except (ValueError, RecursionError, TypeError):
            return "(this document cannot be shown: run datagate_verify)"
    return text
