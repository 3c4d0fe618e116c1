"""The HTTP API's JSON parser: DRF's, with nesting too deep to decode refused as DG-2009.

DRF's `JSONParser` turns a `ValueError` into a 400 but lets the `RecursionError` of a body
nested thousands of levels deep through, which answered 500. What the body holds is then
checked by the one document door (`core.door`) when a service stores it.
"""

from __future__ import annotations

from typing import Any

from rest_framework.parsers import JSONParser

from core.errors import DataGateError, ErrorCode


class SafeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise DataGateError(ErrorCode.JSON_TOO_DEEP, detail="the request body") from None
