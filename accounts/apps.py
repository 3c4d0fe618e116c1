from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and permissions"

    def ready(self) -> None:
        from accounts.access_changes import connect_receivers
        from accounts.admin import collection_admin_with_object_permissions

        collection_admin_with_object_permissions()
        connect_receivers()
