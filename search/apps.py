from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Keep the index in step with every write: the write engine is given the hook, so
        replication never imports search (search imports replication's models)."""
        from replication.services.engine import write_hook_register
        from search.services import search_index_apply

        write_hook_register("search", search_index_apply)
