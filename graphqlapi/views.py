"""The two doors of /graphql/: HTTP (a Django view; GET shows GraphiQL) and the websocket
(`graphql-transport-ws`, a Channels consumer). Both build a `GraphQLContext` that carries the
bearer token; resolvers check it and its scopes (graphqlapi/context.py).

GraphiQL is served offline: its scripts and styles come from the
`graphene_django_graphiql_static` package's static files (no CDN), through whitenoise like the
console's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.views.decorators.csrf import csrf_exempt
from strawberry.channels import GraphQLWSConsumer
from strawberry.django.views import AsyncGraphQLView
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from core.errors import DataGateError
from graphqlapi.context import GraphQLContext, bearer_token
from graphqlapi.schema import schema


class GraphQLHTTPView(AsyncGraphQLView):
    graphql_ide = "graphiql"
    # Mutations over GET are refused by strawberry; queries over GET are fine to cache-bust.
    allow_queries_via_get = True

    async def get_context(self, request: HttpRequest, response: HttpResponse) -> Any:
        try:
            raw = bearer_token(request.headers.get("Authorization"))
        except DataGateError:
            raw = "\x00malformed"  # refused by the token door, with its reason, when used
        return GraphQLContext(raw_token=raw, request=request)

    async def render_graphql_ide(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(render_to_string("graphqlapi/graphiql.html", request=request))


class GraphQLConsumer(GraphQLWSConsumer):
    """Subscriptions (and queries) over `graphql-transport-ws` only: the token comes in the
    `connection_init` payload and is checked before `connection_ack` (close 4403 otherwise)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            schema=schema,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=dt.timedelta(seconds=10),
            max_subscriptions_per_connection=20,
            **kwargs,
        )

    async def get_context(self, request: Any, response: Any) -> Any:
        return GraphQLContext(request=request)

    async def on_ws_connect(self, context: Any) -> Any:
        try:
            await context.authenticate()
        except DataGateError as refused:
            # Close with the catalogue's close code and text (strawberry's own rejection says
            # only 4403 "Forbidden"); its close that follows is a no-op.
            await self.close(code=int(refused.close_code), reason=refused.text)
            raise ConnectionRejectionError(
                {"code": refused.code, "message": refused.text}
            ) from None
        return None


graphql_view = csrf_exempt(GraphQLHTTPView.as_view(schema=schema))
graphql_consumer = GraphQLConsumer.as_asgi()
