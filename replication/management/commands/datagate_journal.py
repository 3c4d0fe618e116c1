"""The change journal: its size and growth (--size), and pruning by age (--prune)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from replication.maintenance import journal_prune_all, journal_size, maintenance_run
from replication.management.commands._maintenance import collections_from_options
from replication.models import MaintenanceJob


class Command(BaseCommand):
    help = (
        "--size: rows, bytes and growth per day of each collection's journal. --prune: delete "
        "entries older than DATAGATE JOURNAL_RETENTION_DAYS, keeping those an online replica "
        "has not acknowledged yet."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--size", action="store_true", help="estimate size and growth")
        action.add_argument("--prune", action="store_true", help="prune old entries")
        parser.add_argument("--dry-run", action="store_true", help="with --prune: change nothing")
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="with --prune: retention in days (default DATAGATE JOURNAL_RETENTION_DAYS)",
        )
        parser.add_argument(
            "--collection",
            action="append",
            metavar="TENANT/NAME",
            help="only this collection (repeatable; default: all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        named = options["collection"]
        ids = [c.pk for c in collections_from_options(named)]
        if options["days"] is not None and options["days"] < 0:
            raise CommandError("--days must not be negative")
        if options["size"]:
            for size in journal_size(collection_ids=ids if named else None):
                self.stdout.write(size.line())
            return

        def prune() -> list[Any]:
            return journal_prune_all(
                collection_ids=ids, dry_run=options["dry_run"], retention_days=options["days"]
            )

        if options["dry_run"]:
            reports = prune()
        else:
            _, reports = maintenance_run(
                job=MaintenanceJob.JOURNAL_PRUNE, trigger="command", action=prune
            )
        for report in reports:
            self.stdout.write(report.line())
