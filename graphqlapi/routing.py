"""The GraphQL websocket (`graphql-transport-ws`) at /graphql/, beside the HTTP endpoint."""

from django.urls import re_path

from graphqlapi.views import graphql_consumer

websocket_urlpatterns: list = [re_path(r"^graphql/?$", graphql_consumer)]
