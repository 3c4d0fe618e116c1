"""Collect expired tombstones and move each collection's purge horizon (docs/maintenance.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from replication.maintenance import maintenance_run, tombstones_collect_all
from replication.management.commands._maintenance import collections_from_options
from replication.models import MaintenanceJob


class Command(BaseCommand):
    help = (
        "Remove tombstones older than each collection's TTL and move its purge horizon; "
        "prints what was removed and where each horizon moved."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="report what would be collected, change nothing"
        )
        parser.add_argument(
            "--collection",
            action="append",
            metavar="TENANT/NAME",
            help="only this collection (repeatable; default: all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ids = [c.pk for c in collections_from_options(options["collection"])]
        if options["dry_run"]:
            reports = tombstones_collect_all(collection_ids=ids, dry_run=True)
        else:
            _, reports = maintenance_run(
                job=MaintenanceJob.GC,
                trigger="command",
                action=lambda: tombstones_collect_all(collection_ids=ids),
            )
        for report in reports:
            self.stdout.write(report.line())
