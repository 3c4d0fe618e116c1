"""Conversations with the sync consumer in process (Channels' WebsocketCommunicator).

The fixtures that open them (`world`, `open_replica`, `fresh_channel_layer`, `fast_passwords`)
are in `tests/replication/conftest.py`; a module that holds such conversations asks for
`pytest.mark.usefixtures("fresh_channel_layer", "fast_passwords")`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.routing import URLRouter

from replication.routing import websocket_urlpatterns

APP = URLRouter(websocket_urlpatterns)

# `open_replica(token=None, *, path=..., collection=..., capabilities=..., timeout=...)`
Opener = Callable[..., Any]
