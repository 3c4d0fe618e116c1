from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and permissions"

    def ready(self) -> None:
        # In ready(): both modules import models, which cannot load before the app registry.
        from accounts.access_changes import connect_receivers
        from accounts.admin import collection_admin_with_object_permissions

        collection_admin_with_object_permissions()
        connect_receivers()
