from django.contrib import admin
from django.urls import include, path

from console import views as console_views
from datagate_site.metrics import metrics_view
from datagate_site.site_views import favicon, healthz, readyz
from graphqlapi.views import graphql_view

admin.site.site_header = "DataGate console"
admin.site.site_title = "DataGate"
admin.site.index_title = "Administration"

urlpatterns = [
    path("", console_views.root),
    path("favicon.ico", favicon),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("console/", include("console.urls")),
    path("admin/", admin.site.urls),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("api/v1/", include("api.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("graphql/", graphql_view, name="graphql"),
]

# JSON errors in the API's shape under /api/, Django's pages elsewhere.
handler404 = "api.errors.not_found_view"
handler500 = "api.errors.server_error_view"
