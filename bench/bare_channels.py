"""The bare Channels baseline: an ASGI app with nothing but a group fan-out consumer.

`daphne bench.bare_channels:application` serves it with DataGate's settings, so it uses the
same channel layer (in-memory, or Redis with `REDIS_URL`). Receivers connect to
`/bench/fanout/` and join one group; the writer connects to `/bench/publish/` and every frame
it sends is group-sent as it is and forwarded by every member: plain Channels, no database.
"""

from __future__ import annotations

import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "datagate_site.settings")
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "bench.fanout"


class FanoutReceiver(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_frame(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class FanoutPublisher(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(GROUP, {"type": "bench.frame", "text": text_data})


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("bench/fanout/", FanoutReceiver.as_asgi()),
                path("bench/publish/", FanoutPublisher.as_asgi()),
            ]
        )
    }
)
