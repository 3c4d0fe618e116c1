"""Create, list and delete tenants, for scripts and operators."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandParser

from accounts.management.commands._cli import refused, write_rows
from accounts.models import Tenant
from accounts.services import tenant_create, tenant_delete


class Command(BaseCommand):
    help = (
        "Manage tenants. `create SLUG [--name NAME]`, `list [--json]`, "
        "`delete SLUG --yes` (deletes its collections, documents and topics too). "
        "Exit status 0 done, 1 refused, 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="create a tenant")
        create.add_argument("slug", help="1-64 letters, digits, '.', '_' or '-'")
        create.add_argument("--name", default="", help="display name (default: the slug)")
        listing = actions.add_parser("list", help="list tenants with their member counts")
        listing.add_argument("--json", action="store_true", help="print a JSON array")
        delete = actions.add_parser("delete", help="delete a tenant and everything it holds")
        delete.add_argument("slug")
        delete.add_argument("--yes", action="store_true", help="required: confirms the delete")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            try:
                tenant = tenant_create(slug=options["slug"], name=options["name"])
            except (ValueError, ValidationError) as exc:
                raise refused(_message(exc)) from exc
            self.stdout.write(f"created tenant {tenant.slug}")
        elif action == "list":
            rows = [
                {"slug": t.slug, "name": t.name, "members": t.memberships.count()}
                for t in Tenant.objects.all()
            ]
            write_rows(self, rows, as_json=options["json"])
        elif action == "delete":
            if not options["yes"]:
                raise refused("deleting a tenant deletes all its data: add --yes to confirm")
            try:
                tenant_delete(slug=options["slug"])
            except LookupError as exc:
                raise refused(str(exc)) from exc
            self.stdout.write(f"deleted tenant {options['slug']}")


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return str(exc)
