from django.contrib.auth import views as auth_views
from django.urls import path

from console import operator_views, view_pages, views

app_name = "console"

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="console/login.html",
            redirect_authenticated_user=True,
            next_page="console:index",
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="console:login"), name="logout"),
    path("", views.index, name="index"),
    path("errors/codes/", views.error_codes, name="error_codes"),
    path("t/<str:tenant>/", views.dashboard, name="dashboard"),
    path("t/<str:tenant>/c/<str:collection>/", views.dashboard, name="collection"),
    path("t/<str:tenant>/c/<str:collection>/documents/", views.documents, name="documents"),
    path(
        "t/<str:tenant>/c/<str:collection>/documents/new/",
        views.document_new,
        name="document_new",
    ),
    path("t/<str:tenant>/c/<str:collection>/document/", views.document_detail, name="document"),
    path(
        "t/<str:tenant>/c/<str:collection>/document/edit/",
        views.document_edit,
        name="document_edit",
    ),
    path(
        "t/<str:tenant>/c/<str:collection>/document/delete/",
        views.document_remove,
        name="document_delete",
    ),
    path("t/<str:tenant>/replicas/", views.replicas, name="replicas"),
    path("t/<str:tenant>/replicas/<int:pk>/", views.replica_detail, name="replica"),
    path(
        "t/<str:tenant>/replicas/<int:pk>/disconnect/",
        views.replica_disconnect,
        name="replica_disconnect",
    ),
    path(
        "t/<str:tenant>/replicas/<int:pk>/revoke/",
        views.replica_revoke,
        name="replica_revoke",
    ),
    path("t/<str:tenant>/errors/", views.errors, name="errors"),
    path("t/<str:tenant>/topics/", views.topics, name="topics"),
    path("t/<str:tenant>/topics/<int:pk>/", views.topic_detail, name="topic"),
    path("t/<str:tenant>/collections/", operator_views.collections, name="collections"),
    path(
        "t/<str:tenant>/c/<str:collection>/settings/",
        operator_views.collection_settings,
        name="collection_settings",
    ),
    path(
        "t/<str:tenant>/c/<str:collection>/export/",
        operator_views.collection_export,
        name="collection_export",
    ),
    path(
        "t/<str:tenant>/c/<str:collection>/views/",
        view_pages.data_views_page,
        name="data_views",
    ),
    path("t/<str:tenant>/members/", operator_views.members, name="members"),
    path(
        "t/<str:tenant>/topics/<int:pk>/messages/",
        operator_views.topic_messages,
        name="topic_messages",
    ),
    path("t/<str:tenant>/audit/", operator_views.audit, name="audit"),
    path("maintenance/", views.maintenance, name="maintenance"),
    path("maintenance/run/", views.maintenance_start, name="maintenance_run"),
]
