"""Site-wide endpoints outside the console and the API: `/favicon.ico`, `/healthz`, `/readyz`.

`/healthz` says the process serves requests (liveness: restart it if this fails). `/readyz`
says it should get traffic (readiness: the load balancer's health check): the database answers
a query, the channel layer's server answers, and the process is not draining for a stop
(docs/deploy.md). Both answer JSON and need no login; they reveal nothing but "ok" or which
dependency failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import redis.asyncio as redis_asyncio
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.staticfiles import finders
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, JsonResponse
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET

from core.shutdown import DRAINING

logger = logging.getLogger(__name__)

# How long /readyz waits for each dependency before calling it down.
CHECK_TIMEOUT = 2.0


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> FileResponse:
    """Browsers ask for /favicon.ico on the first page; a 404 there is a console error."""
    path = finders.find("console/favicon.ico")
    if not path:
        raise Http404("favicon")
    return FileResponse(open(path, "rb"), content_type="image/x-icon")


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _database_check() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _channel_layer_check() -> None:
    backend = str(settings.CHANNEL_LAYERS["default"]["BACKEND"])
    if "redis" in backend.lower():
        client: Any = redis_asyncio.from_url(
            os.environ["REDIS_URL"], socket_connect_timeout=CHECK_TIMEOUT
        )
        try:
            await client.ping()
        finally:
            await client.aclose()
        return
    layer = get_channel_layer()  # in memory: a message to ourselves and back
    assert layer is not None
    channel = await layer.new_channel("readyz.")
    await layer.send(channel, {"type": "readyz.ping"})
    await layer.receive(channel)


async def readyz(request: HttpRequest) -> JsonResponse:
    if request.method != "GET":
        return JsonResponse({"status": "method not allowed"}, status=405)
    if DRAINING.is_set():
        return JsonResponse({"status": "draining"}, status=503)
    checks: dict[str, str] = {}
    for name, check in (
        ("database", sync_to_async(_database_check)),
        ("channel_layer", _channel_layer_check),
    ):
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT)
            checks[name] = "ok"
        except Exception as exc:  # any failure means: not ready
            logger.warning("readyz: %s check failed: %s", name, exc)
            checks[name] = f"failed: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    response = JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
    response["Cache-Control"] = "no-cache, no-store, must-revalidate, max-age=0"
    return response
