"""Every error code is unique, fits on the wire, and is documented in docs/errors.md."""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import MAX_ERROR_TEXT, DataGateError, ErrorCode, error_by_code

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_every_code_is_unique_and_well_formed() -> None:
    codes = [e.code for e in ErrorCode]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"DG-\d{4}", c) for c in codes)


def test_every_code_is_documented_once_and_nothing_else_is() -> None:
    documented = re.findall(r"^### (DG-\d{4})\b", DOC.read_text(), flags=re.MULTILINE)
    assert len(documented) == len(set(documented)), "a code is documented twice"
    assert set(documented) == {e.code for e in ErrorCode}


def test_error_texts_start_with_the_code_and_fit_in_a_close_frame() -> None:
    error = DataGateError(ErrorCode.BAD_DOCUMENT_ID, detail="x" * 500)
    assert error.text.startswith("DG-4002 ")
    assert len(error.text) <= MAX_ERROR_TEXT
    assert len(error.text.encode()) <= MAX_ERROR_TEXT + 2
    token = ErrorCode.TOKEN_INVALID.text(reason="token expired at 2026-11-21T10:00Z")
    assert token == "DG-1001 failed to validate token: token expired at 2026-11-21T10:00Z"


def test_codes_can_be_looked_up() -> None:
    assert error_by_code("DG-3001") is ErrorCode.COLLECTION_NOT_FOUND
