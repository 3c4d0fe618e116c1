from django.apps import AppConfig


class CouchdbConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "couchdb"
    verbose_name = "CouchDB replication protocol"
