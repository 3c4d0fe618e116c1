from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "DataGate console"
admin.site.site_title = "DataGate"
admin.site.index_title = "Administration"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
]
