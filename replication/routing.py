"""Websocket routes of the sync protocol (docs/protocol.md)."""

from django.urls import re_path

from replication.consumers import ReplicationConsumer

SEGMENT = r"[^/]+"

# Each with or without the trailing slash: Nitrite's G3 replica opens
# `/ws/datagate/{tenant}/{collection}/{user}` (NITRITE-G3.md section 1).
websocket_urlpatterns: list = [
    re_path(
        rf"^ws/datagate/(?P<tenant>{SEGMENT})/(?P<collection>{SEGMENT})/?$",
        ReplicationConsumer.as_asgi(),
    ),
    # A data view of the collection (docs/protocol.md section 12).
    re_path(
        rf"^ws/datagate/(?P<tenant>{SEGMENT})/(?P<collection>{SEGMENT})/views/(?P<view>{SEGMENT})/?$",
        ReplicationConsumer.as_asgi(),
    ),
    # The Nitrite form: the user segment must be the token's user (DG-1003).
    re_path(
        rf"^ws/datagate/(?P<tenant>{SEGMENT})/(?P<collection>{SEGMENT})/(?P<user>{SEGMENT})/?$",
        ReplicationConsumer.as_asgi(),
    ),
]
