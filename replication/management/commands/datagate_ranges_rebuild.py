"""Recompute collections' range summaries from their rows (DG-7107 in datagate_verify)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from replication.management.commands._maintenance import collections_from_options
from replication.ranges import ranges_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the range summaries (count and hash per bucket of the id-hash space) of "
        "every collection, or the named ones, from their documents and tombstones. Writes "
        "keep them up to date; run this only after datagate_verify reports DG-7107."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--collection",
            action="append",
            metavar="TENANT/NAME",
            help="only this collection (repeatable; default: all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for collection in collections_from_options(options["collection"]):
            wrong = ranges_rebuild(collection_id=collection.pk)
            self.stdout.write(f"{collection}: rebuilt, {wrong} bucket(s) were wrong")
