from django.apps import AppConfig


class ReplicationConfig(AppConfig):
    name = "replication"
    verbose_name = "Replication"

    def ready(self) -> None:
        from datagate_site import checks  # noqa: F401  (registers the DATAGATE system checks)
