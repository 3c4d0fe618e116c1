from __future__ import annotations

import pytest

from core.envelope import Header, decode_frame, make_header
from core.errors import DataGateError, ErrorCode


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", ErrorCode.NOT_JSON),
        ("[1]", ErrorCode.MISSING_HEADER),
        ('{"header": 3}', ErrorCode.MISSING_HEADER),
        (b"\xff", ErrorCode.NOT_JSON),
    ],
)
def test_bad_frames_get_their_codes(frame: str | bytes, code: ErrorCode) -> None:
    with pytest.raises(DataGateError) as caught:
        decode_frame(frame)
    assert caught.value.error is code


def test_a_server_header_validates_as_a_header() -> None:
    header = make_header(message_type="no2.sync.feed", origin="server-1", tenant="t")
    assert Header.model_validate(header).messageType == "no2.sync.feed"
