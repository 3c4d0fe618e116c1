"""The console's live updates: `/ws/console/{tenant}/` and `/ws/console/{tenant}/{collection}/`.

The dashboard gets its fragments; the replicas page connects with `?view=replicas&query=...`
(its own filters, sort and page) and gets its table rows, rendered as a reload would.

Authenticated by the Django session (AuthMiddlewareStack in datagate_site/asgi.py). The
consumer renders the dashboard's live fragments (console/dashboard.py) and pushes them every
`REFRESH_SECONDS`, and sooner when a collection's doorbell rings (at most once per
`MIN_GAP_SECONDS`). Access is checked again on every push: a user who loses their role stops
receiving data and the socket closes with 4403.

Console viewers are few, so each viewer joins the collection doorbell groups itself; replicas,
which are many, are not served this way (see STYLE.md on fan-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import QueryDict

from accounts.models import Tenant
from console.access import tenant_readable
from console.dashboard import dashboard_fragments, replicas_fragments
from core.daphne_websocket import OVERSIZED, install_close_handling
from replication.doorbell import collection_group
from replication.models import Collection

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
MIN_GAP_SECONDS = 1.0
CLOSE_FORBIDDEN = 4403
CLOSE_FRAME_TOO_LARGE = 1009

install_close_handling()  # 1009 for a message over the frame limit


def _authorize(
    user: Any, tenant_slug: str, collection_name: str | None
) -> tuple[Tenant, list[int]]:
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None or not tenant_readable(user=user, tenant=tenant):
        raise PermissionError(tenant_slug)
    collections = Collection.objects.filter(tenant=tenant)
    if collection_name is not None:
        collections = collections.filter(name=collection_name)
        if not collections.exists():
            raise PermissionError(collection_name)
    return tenant, list(collections.values_list("pk", flat=True))


def _fragments(
    user: Any, tenant: Tenant, collection_name: str | None, view: QueryDict
) -> dict[str, str] | None:
    if not tenant_readable(user=user, tenant=tenant):
        return None
    if view.get("view") == "replicas":
        return replicas_fragments(tenant=tenant, params=QueryDict(view.get("query", "")))
    return dashboard_fragments(tenant=tenant, collection_name=collection_name)


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.user = self.scope.get("user")
        kwargs = self.scope["url_route"]["kwargs"]
        self.collection_name: str | None = kwargs.get("collection")
        self.view = QueryDict(self.scope.get("query_string", b"").decode("latin-1"))
        self.groups_joined: list[str] = []
        self.ticker: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        try:
            self.tenant, collection_ids = await database_sync_to_async(_authorize)(
                self.user, kwargs["tenant"], self.collection_name
            )
        except PermissionError:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        for collection_id in collection_ids:
            group = collection_group(collection_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        self.ticker = asyncio.create_task(self._tick())

    async def disconnect(self, code: int) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ticker
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """The page sends nothing; anything it sends (text, bytes, not JSON) just asks for a
        fresh push. A message over DATAGATE_MAX_FRAME_BYTES closes the socket 1009, as on
        the sync and topics sockets (core/daphne_websocket.py)."""
        if message.get(OVERSIZED) is not None:
            await self.close(code=CLOSE_FRAME_TOO_LARGE)
            return
        self.wake.set()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        self.wake.set()

    async def collection_changed(self, message: dict[str, Any]) -> None:
        """The doorbell (replication/doorbell.py): a collection moved; push soon."""
        self.wake.set()

    async def _tick(self) -> None:
        while True:
            try:
                fragments = await database_sync_to_async(_fragments)(
                    self.user, self.tenant, self.collection_name, self.view
                )
            except Exception:
                logger.exception("console dashboard update failed")
                fragments = {}
            if fragments is None:
                await self.close(code=CLOSE_FORBIDDEN)
                return
            if fragments:
                await self.send_json({"live": fragments})
            await asyncio.sleep(MIN_GAP_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), REFRESH_SECONDS - MIN_GAP_SECONDS)
            self.wake.clear()
