"""Export one collection as JSON lines (documents, tombstones, a metadata header)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from replication.management.commands._maintenance import collections_from_options
from replication.transfer import collection_export


class Command(BaseCommand):
    help = (
        "Write TENANT/COLLECTION to FILE ('-' for standard output) as JSON lines: a header with "
        "the collection's metadata, then every document and tombstone. docs/maintenance.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("collection", metavar="TENANT/COLLECTION")
        parser.add_argument("file", metavar="FILE")

    def handle(self, *args: Any, **options: Any) -> None:
        (collection,) = collections_from_options([options["collection"]])
        if options["file"] == "-":
            report = collection_export(collection_id=collection.pk, out=self.stdout)
            sys.stderr.write(report.line() + "\n")
            return
        path = Path(options["file"])
        partial = path.with_name(path.name + ".partial")
        with partial.open("w", encoding="utf-8") as out:
            report = collection_export(collection_id=collection.pk, out=out)
        partial.replace(path)  # a complete file or none: never a truncated export
        self.stdout.write(f"{report.line()} to {path}")
