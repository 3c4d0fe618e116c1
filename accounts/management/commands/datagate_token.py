"""Issue, refresh and revoke OAuth2 tokens from the command line, for scripts and operators.

Tokens given to `--revoke` and `--refresh` are best passed as `-` (read from stdin), so they
do not show in the process list; on the command line write `--revoke=TOKEN`, since a token may
start with "-". Tokens are printed only to stdout, never logged.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.management.commands._cli import refused, tenant_named, user_named
from accounts.models import Role
from accounts.services import membership_set, token_pair_issue, token_refresh, token_revoke


class Command(BaseCommand):
    help = (
        "Print a fresh access token for USER (creating the CLI OAuth2 application it needs). "
        "`--tenant SLUG --role ROLE` first gives USER that role; `--with-refresh` also issues a "
        "refresh token (printed on a second line, or in `--json`); `--refresh TOKEN|-` trades a "
        "refresh token for a new pair; `--revoke TOKEN|-` revokes an access or refresh token "
        "(write `--revoke=TOKEN`: a token may start with '-'; `-` reads it from stdin). "
        "Exit status 0 done, 1 refused, 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", nargs="?", help="the user the token acts as")
        parser.add_argument(
            "--scope", default="read write", help='space-separated scopes, e.g. "read write topics"'
        )
        parser.add_argument(
            "--expires-in",
            type=int,
            default=None,
            help="lifetime in seconds (default: DATAGATE ACCESS_TOKEN_TTL)",
        )
        parser.add_argument("--tenant", help="give USER a role in this tenant first")
        parser.add_argument("--role", choices=Role.values, help="the role for --tenant")
        parser.add_argument(
            "--with-refresh", action="store_true", help="also issue a refresh token"
        )
        parser.add_argument("--json", action="store_true", help="print the OAuth2 token JSON")
        parser.add_argument(
            "--refresh", metavar="TOKEN", help="rotate this refresh token (- reads stdin)"
        )
        parser.add_argument("--revoke", metavar="TOKEN", help="revoke this token (- reads stdin)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["revoke"]:
            try:
                kind = token_revoke(raw_token=_raw(options["revoke"]))
            except LookupError as exc:
                raise refused(str(exc)) from exc
            self.stdout.write(f"revoked {kind} token")
            return
        if options["refresh"]:
            try:
                issued = token_refresh(
                    raw_refresh_token=_raw(options["refresh"]), expires_in=options["expires_in"]
                )
            except LookupError as exc:
                raise refused(str(exc)) from exc
            self._print(issued, as_json=options["json"])
            return
        if not options["username"]:
            raise CommandError("name a USER (or use --revoke / --refresh)", returncode=2)
        user = user_named(options["username"])
        if bool(options["tenant"]) != bool(options["role"]):
            raise CommandError("--tenant and --role go together", returncode=2)
        if options["tenant"]:
            membership_set(user=user, tenant=tenant_named(options["tenant"]), role=options["role"])
        try:
            issued = token_pair_issue(
                user=user,
                scopes=options["scope"].split(),
                expires_in=options["expires_in"],
                with_refresh=options["with_refresh"],
            )
        except ValueError as exc:
            raise refused(str(exc)) from exc
        self._print(issued, as_json=options["json"])

    def _print(self, issued: Any, *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(issued.as_dict()))
            return
        self.stdout.write(issued.access_token)
        if issued.refresh_token:
            self.stdout.write(issued.refresh_token)


def _raw(value: str) -> str:
    return sys.stdin.readline().strip() if value == "-" else value.strip()
