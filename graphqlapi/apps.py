from django.apps import AppConfig


class GraphqlApiConfig(AppConfig):
    name = "graphqlapi"
    verbose_name = "GraphQL API"
