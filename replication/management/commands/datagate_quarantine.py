"""Quarantine (or repair) stored documents that cannot be served (DG-7108, docs/maintenance.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from replication.management.commands._maintenance import collections_from_options
from replication.quarantine import collection_quarantine


class Command(BaseCommand):
    help = (
        "Find stored documents the document door would refuse (lone surrogates, NUL, NaN or "
        "Infinity, nesting too deep, ids outside the rules: DG-7108 of datagate_verify), copy "
        "each to the quarantine table and delete it through the services (a tombstone), or "
        "with --repair write it again with the bad text as U+FFFD and NaN/Infinity as null. "
        "Exit status 0."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--collection",
            action="append",
            metavar="TENANT/NAME",
            help="only this collection (repeatable; default: all)",
        )
        parser.add_argument(
            "--repair", action="store_true", help="repair text and numbers instead of deleting"
        )
        parser.add_argument("--dry-run", action="store_true", help="only list what would be done")

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        for collection in collections_from_options(options["collection"]):
            done = collection_quarantine(
                collection_id=collection.pk, repair=options["repair"], dry_run=options["dry_run"]
            )
            for item in done:
                self.stdout.write(f"{collection}: {item.doc_id!r} {item.reason}: {item.action}")
            total += len(done)
        self.stdout.write(f"{total} document(s) quarantined" if total else "nothing to quarantine")
