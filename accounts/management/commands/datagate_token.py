"""Print a fresh OAuth2 access token for a user, for scripts, operators and tests."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import access_token_issue


class Command(BaseCommand):
    help = "Print a fresh access token for USER (creating the CLI OAuth2 application it needs)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--scope", default="read write", help='space-separated scopes, e.g. "read write topics"'
        )
        parser.add_argument(
            "--expires-in",
            type=int,
            default=None,
            help="lifetime in seconds (default: DATAGATE ACCESS_TOKEN_TTL)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        try:
            raw = access_token_issue(
                user=user, scopes=options["scope"].split(), expires_in=options["expires_in"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(raw)
