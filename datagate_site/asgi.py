"""The ASGI application daphne serves: HTTP (Django) and the websocket protocols."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "datagate_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.websocket_origins import WebsocketOriginCheck  # noqa: E402
from console.routing import websocket_urlpatterns as console_routes  # noqa: E402
from replication.routing import websocket_urlpatterns as replication_routes  # noqa: E402
from replication.scheduler import MaintenanceStarter  # noqa: E402
from topics.routing import websocket_urlpatterns as topics_routes  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": WebsocketOriginCheck(
            URLRouter(replication_routes + topics_routes + console_routes)
        ),
    }
)
# Starts the in-server maintenance schedule (DATAGATE MAINTENANCE_INTERVAL) on first use.
application = MaintenanceStarter(application)
