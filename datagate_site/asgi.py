"""The ASGI application daphne serves: HTTP (Django) and the websocket protocols."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "datagate_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.websocket_origins import WebsocketOriginCheck  # noqa: E402
from console.routing import websocket_urlpatterns as console_routes  # noqa: E402
from core.daphne_websocket import (  # noqa: E402
    install_direct_writes,
    install_frame_limit,
    install_text_decoding,
)
from couchdb.asgi import PREFIX as COUCHDB_PREFIX  # noqa: E402
from couchdb.asgi import application as couchdb_app  # noqa: E402
from datagate_site.websocket_refusal import NOT_FOUND_ROUTE  # noqa: E402
from graphqlapi.routing import websocket_urlpatterns as graphql_routes  # noqa: E402
from replication.routing import websocket_urlpatterns as replication_routes  # noqa: E402
from replication.scheduler import MaintenanceStarter  # noqa: E402
from topics.routing import websocket_urlpatterns as topics_routes  # noqa: E402

# daphne's websocket size limit follows DATAGATE_MAX_FRAME_BYTES, whatever command line started
# it (`make run`, the production command, the tests' servers): see
# docs/decisions/0010-one-frame-limit.md.
install_frame_limit()
# Frames go to the socket at once, not on the reactor's next turn (core/daphne_websocket.py).
install_direct_writes()
# A text message's UTF-8 is checked once, as daphne decodes it; 1007 when it is not.
install_text_decoding()


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/couchdb/` speaks the CouchDB replication protocol (couchdb/asgi.py); the rest is Django."""
    if scope["path"].startswith(COUCHDB_PREFIX):
        await couchdb_app(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": WebsocketOriginCheck(
            # Any other path: refused with HTTP 403, no traceback (websocket_refusal.py).
            URLRouter(
                [
                    *replication_routes,
                    *topics_routes,
                    *console_routes,
                    *graphql_routes,
                    NOT_FOUND_ROUTE,
                ]
            )
        ),
    }
)
# Starts the in-server maintenance schedule (DATAGATE MAINTENANCE_INTERVAL) on first use.
application = MaintenanceStarter(application)
