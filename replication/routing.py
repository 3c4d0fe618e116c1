"""Websocket routes of the sync protocol (docs/protocol.md)."""

websocket_urlpatterns: list = []
