"""Apply every topic's retention: remove messages older than its days, beyond its count."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from topics.services import topics_trim


class Command(BaseCommand):
    help = (
        "Remove topic messages past their topic's retention (by age, then by count). "
        "Offsets never change; consumers simply no longer find the removed ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be removed, remove nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = bool(options["dry_run"])
        verb = "would remove" if dry_run else "removed"
        total = 0
        for result in topics_trim(dry_run=dry_run):
            total += result.removed
            self.stdout.write(
                f"{result.topic}: {verb} {result.removed} "
                f"({result.by_age} by age, {result.by_count} by count)"
            )
        self.stdout.write(f"total: {verb} {total} message(s)")
