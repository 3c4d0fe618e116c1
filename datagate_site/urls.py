from django.contrib import admin
from django.urls import include, path

from console import views as console_views

admin.site.site_header = "DataGate console"
admin.site.site_title = "DataGate"
admin.site.index_title = "Administration"

urlpatterns = [
    path("", console_views.root),
    path("console/", include("console.urls")),
    path("admin/", admin.site.urls),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
]
