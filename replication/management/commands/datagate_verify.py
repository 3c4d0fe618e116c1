"""Check each collection's invariants; exit non-zero when anything is wrong (DG-71xx)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from replication.management.commands._maintenance import collections_from_options
from replication.verify import DEFAULT_LIMIT, collection_verify


class Command(BaseCommand):
    help = (
        "Check every collection (or the named ones): seqs unique and within the counter, no id "
        "both live and deleted, every document and tombstone journalled, horizons below the "
        "counter. Prints each problem with its DG-71xx code; exits 1 when there is any."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--collection",
            action="append",
            metavar="TENANT/NAME",
            help="only this collection (repeatable; default: all)",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            help=f"examples listed per kind of problem (default {DEFAULT_LIMIT})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        collections = collections_from_options(options["collection"])
        damaged = 0
        problems = 0
        for collection in collections:
            report = collection_verify(collection_id=collection.pk, limit=max(1, options["limit"]))
            out = self.stdout if report.ok else self.stderr
            for line in report.lines():
                out.write(line)
            if not report.ok:
                damaged += 1
                problems += len(report.problems) + sum(report.more.values())
        if damaged:
            raise CommandError(
                f"{problems} problem(s) in {damaged} of {len(collections)} collection(s); "
                "docs/errors.md (DG-71xx) says what each means and what to do"
            )
        self.stdout.write(f"{len(collections)} collection(s) checked, no problems found")
