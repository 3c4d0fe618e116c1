"""Restore a collection from a `datagate_export` file, with a new epoch (docs/maintenance.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.access import System
from accounts.models import Tenant
from core.errors import DataGateError
from replication.maintenance import maintenance_run
from replication.management.commands._maintenance import collection_names_check
from replication.models import MaintenanceJob
from replication.transfer import ImportReport, collection_import


class Command(BaseCommand):
    help = (
        "Replace the content of TENANT/COLLECTION (created if missing) with an export FILE. "
        "The collection gets a new epoch: replicas get a full snapshot and push again what the "
        "server lost."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("collection", metavar="TENANT/COLLECTION")
        parser.add_argument("file", metavar="FILE")

    def handle(self, *args: Any, **options: Any) -> None:
        collection_names_check([options["collection"]])
        tenant_slug, _, name = options["collection"].partition("/")
        tenant = Tenant.objects.filter(slug=tenant_slug).first()
        if tenant is None:
            raise CommandError(f"no tenant {tenant_slug!r}")
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"no file {str(path)!r}")
        reports: list[ImportReport] = []

        def restore() -> list[ImportReport]:
            with path.open(encoding="utf-8") as source:
                reports.append(
                    collection_import(
                        actor=System("datagate_import"), tenant=tenant, name=name, source=source
                    )
                )
            return reports

        try:
            maintenance_run(job=MaintenanceJob.IMPORT, trigger="command", action=restore)
        except DataGateError as error:
            raise CommandError(f"{error.text}; nothing was imported") from error
        except UnicodeDecodeError as exc:
            raise CommandError(f"{path} is not UTF-8 text; nothing was imported") from exc
        self.stdout.write(reports[0].line())
