"""Every HTTP API error in one JSON shape, with the same DG codes as the websocket protocol.

`{"error": {"code": "DG-NNNN", "message": "DG-NNNN ...", "status": N}}`. A `DataGateError`
keeps its code and the catalogue's HTTP status; DRF's own exceptions map to the matching code
(1xxx authentication, 5002 throttling, 8xxx HTTP-only errors); anything unexpected becomes
DG-5003 with a reference that is in the server log. Every error answered is recorded as an
error event (`replication.services.events.error_event_record`), like the websocket's.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import DataError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error
from rest_framework import exceptions
from rest_framework.response import Response

from core import metrics
from core.errors import DataGateError, ErrorCode
from replication.services.events import error_event_record

logger = logging.getLogger(__name__)


def error_body(error: DataGateError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.text, "status": error.error.http_status}}


def _detail_text(detail: Any) -> str:
    """DRF's nested error details as one short line."""
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_detail_text(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return ", ".join(_detail_text(item) for item in detail)
    return str(detail)


def _retry_after(exc: Exception) -> int | None:
    wait = getattr(exc, "wait", None) if isinstance(exc, exceptions.Throttled) else None
    return int(wait) + 1 if wait is not None else None


def as_datagate_error(exc: Exception, *, method: str = "") -> DataGateError | None:
    """The catalogue error for an exception raised while handling an API request."""
    if isinstance(exc, DataGateError):
        return exc
    if isinstance(exc, exceptions.NotAuthenticated):
        return DataGateError(ErrorCode.TOKEN_INVALID, reason="no token given")
    if isinstance(exc, exceptions.AuthenticationFailed):
        return DataGateError(ErrorCode.TOKEN_INVALID, reason=_detail_text(exc.detail))
    if isinstance(exc, exceptions.Throttled):
        seconds = _retry_after(exc)
        wait = f"retry in {seconds} s" if seconds is not None else "retry later"
        return DataGateError(ErrorCode.RATE_LIMITED, detail=wait)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return DataGateError(ErrorCode.METHOD_NOT_ALLOWED, method=method)
    if isinstance(exc, (exceptions.NotFound, Http404)):
        return DataGateError(ErrorCode.NOT_FOUND, what="no such resource")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return DataGateError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, media_type=str(exc.args[0])[:40])
    if isinstance(exc, exceptions.NotAcceptable):
        return DataGateError(ErrorCode.NOT_ACCEPTABLE)
    if isinstance(exc, exceptions.ParseError):
        return DataGateError(ErrorCode.BAD_BODY, detail=_detail_text(exc.detail))
    if isinstance(exc, exceptions.ValidationError):
        return DataGateError(ErrorCode.BAD_BODY, detail=_detail_text(exc.detail))
    if isinstance(exc, DataError):
        # A value the database refuses (PostgreSQL: NUL in text, a lone surrogate in JSON)
        # came from the request: it is the caller's bad input, not the server's failure.
        return DataGateError(ErrorCode.BAD_PARAMETER, name="value", detail="not storable text")
    if isinstance(exc, exceptions.PermissionDenied):
        return DataGateError(ErrorCode.TOKEN_SCOPE, scope="?")
    return None


def record(error: DataGateError, request: Any, kwargs: dict[str, Any] | None = None) -> None:
    """Count the error and keep it as an error event for the console."""

    metrics.error_record(code=error.code)
    try:
        user = getattr(request, "user", None)
    except Exception:  # authentication itself failed unexpectedly: record without a user
        user = None
    kwargs = kwargs or {}
    try:
        error_event_record(
            error=error,
            user_id=user.pk if user is not None and user.is_authenticated else None,
            tenant=str(kwargs.get("tenant", "")),
            collection=str(kwargs.get("collection", "")),
            context={"http": f"{request.method} {request.path}"[:300]},
        )
    except Exception:  # recording must never turn an error answer into a 500
        logger.warning("could not record error event %s", error.code, exc_info=True)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception becomes the one JSON error shape."""
    request = context.get("request")
    error = as_datagate_error(exc, method=getattr(request, "method", "") or "")
    if error is None:
        reference = uuid.uuid4().hex[:12]
        logger.exception("internal error %s in the HTTP API", reference)
        error = DataGateError(ErrorCode.INTERNAL, reference=reference)
    if request is not None:
        record(error, request, context.get("kwargs"))
    response = Response(error_body(error), status=error.error.http_status)
    seconds = _retry_after(exc)
    if seconds is not None:
        response["Retry-After"] = str(seconds)
    if error.error.http_status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="datagate"'
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found_view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: the API's JSON error under /api/, Django's page elsewhere."""
    if not _is_api(request):
        return page_not_found(request, exception or Http404())
    error = DataGateError(ErrorCode.NOT_FOUND, what=request.path[:80])
    metrics.error_record(code=error.code)
    return JsonResponse(error_body(error), status=404)


def server_error_view(request: HttpRequest) -> HttpResponse:
    if not _is_api(request):
        return server_error(request)
    error = DataGateError(ErrorCode.INTERNAL, reference="see the server log")
    metrics.error_record(code=error.code)
    return JsonResponse(error_body(error), status=500)
