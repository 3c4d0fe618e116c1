"""Websocket routes of the console.

Only the console uses the Django session (AuthMiddlewareStack); replicas authenticate with
OAuth2 tokens in their Connect message instead.
"""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from console.consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/console/<str:tenant>/", AuthMiddlewareStack(DashboardConsumer.as_asgi())),
    path(
        "ws/console/<str:tenant>/<str:collection>/",
        AuthMiddlewareStack(DashboardConsumer.as_asgi()),
    ),
]
