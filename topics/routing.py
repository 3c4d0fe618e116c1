"""Websocket routes of the topics protocol (docs/protocol.md, "Topics")."""

websocket_urlpatterns: list = []
