"""The HTTP API, version 1: `/api/v1/...` (see the schema at /api/v1/schema/)."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from api import topic_views, view_views, views

COLLECTION = "tenants/<str:tenant>/collections/<str:collection>/"

urlpatterns = [
    path("tenants/", views.TenantListView.as_view(), name="api-tenants"),
    path(
        "tenants/<str:tenant>/collections/",
        views.CollectionListView.as_view(),
        name="api-collections",
    ),
    path(COLLECTION, views.CollectionStatsView.as_view(), name="api-collection"),
    path(f"{COLLECTION}documents/", views.DocumentListView.as_view(), name="api-documents"),
    path(f"{COLLECTION}documents/<path:doc_id>", views.DocumentView.as_view(), name="api-document"),
    path(f"{COLLECTION}changes/", views.ChangesView.as_view(), name="api-changes"),
    path(f"{COLLECTION}search/", views.SearchView.as_view(), name="api-search"),
    path(f"{COLLECTION}views/", view_views.ViewListView.as_view(), name="api-views"),
    path(f"{COLLECTION}views/<str:view>/", view_views.ViewDetailView.as_view(), name="api-view"),
    path(
        f"{COLLECTION}views/<str:view>/documents/",
        view_views.ViewDocumentsView.as_view(),
        name="api-view-documents",
    ),
    path(
        f"{COLLECTION}views/<str:view>/changes/",
        view_views.ViewChangesView.as_view(),
        name="api-view-changes",
    ),
    path("tenants/<str:tenant>/topics/", topic_views.TopicListView.as_view(), name="api-topics"),
    path(
        "tenants/<str:tenant>/topics/<str:topic>/messages/",
        topic_views.TopicMessagesView.as_view(),
        name="api-topic-messages",
    ),
    path(
        "tenants/<str:tenant>/topics/<str:topic>/commit/",
        topic_views.TopicCommitView.as_view(),
        name="api-topic-commit",
    ),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
