"""Websocket routes of the topics protocol (docs/protocol.md, "Topics")."""

from django.urls import re_path

from topics.consumers import TopicsConsumer

websocket_urlpatterns: list = [
    re_path(r"^ws/topics/(?P<tenant>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/$", TopicsConsumer.as_asgi()),
]
