from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and permissions"

    def ready(self) -> None:
        from accounts.admin import collection_admin_with_object_permissions

        collection_admin_with_object_permissions()
