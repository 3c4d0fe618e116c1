"""Websocket routes of the sync protocol (docs/protocol.md)."""

from django.urls import path

from replication.consumers import ReplicationConsumer

websocket_urlpatterns: list = [
    path("ws/datagate/<str:tenant>/<str:collection>/", ReplicationConsumer.as_asgi()),
    # The Nitrite form: the user segment must be the token's user (DG-1003).
    path("ws/datagate/<str:tenant>/<str:collection>/<str:user>/", ReplicationConsumer.as_asgi()),
]
