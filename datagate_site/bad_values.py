"""Values the database refuses, from a request, are the caller's bad input: 400, not 500.

PostgreSQL refuses NUL in text and a lone surrogate in JSON (SQLite takes both), so a console
URL such as `?id=%00` raised `DataError` in the view's query. The document door refuses such
values before anything is stored (core/door.py); this answers the reads that query with
them. The HTTP API maps the same error to DG-8003 in its own handler (api/errors.py).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import DataError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class BadValueMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DataError):
            return HttpResponseBadRequest(
                "DG-8003 bad parameter value: not text the database can store",
                content_type="text/plain; charset=utf-8",
            )
        return None
