"""Create users, set their role in a tenant, list them: for scripts and operators.

Passwords come from standard input (`--password-stdin`) or an environment variable
(`--password-env NAME`), never from the command line (it shows in `ps`), and are never printed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.management.commands._cli import refused, tenant_named, user_named, write_rows
from accounts.models import Membership, Role
from accounts.services import membership_remove, membership_set, user_create


class Command(BaseCommand):
    help = (
        "Manage users. `create USERNAME (--password-stdin | --password-env VAR) "
        "[--tenant SLUG --role ROLE]`, "
        "`role USERNAME --tenant SLUG --role admin|writer|reader|none`, "
        "`list [--tenant SLUG] [--json]`. Exit status 0 done, 1 refused, 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="create a user")
        create.add_argument("username")
        source = create.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        source.add_argument("--password-env", metavar="VAR", help="take the password from $VAR")
        create.add_argument("--email", default="")
        create.add_argument("--tenant", help="also give the user a role in this tenant")
        create.add_argument("--role", choices=Role.values, default=Role.READER)
        role = actions.add_parser("role", help="set (or with `none` remove) a role in a tenant")
        role.add_argument("username")
        role.add_argument("--tenant", required=True)
        role.add_argument("--role", required=True, choices=[*Role.values, "none"])
        listing = actions.add_parser("list", help="list users with their roles")
        listing.add_argument("--tenant", help="only members of this tenant")
        listing.add_argument("--json", action="store_true", help="print a JSON array")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _create(self, options: dict[str, Any]) -> None:
        tenant = tenant_named(options["tenant"]) if options["tenant"] else None
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = os.environ.get(options["password_env"], "")
            if not password:
                raise refused(f"${options['password_env']} is not set or empty")
        try:
            user = user_create(
                username=options["username"], password=password, email=options["email"]
            )
        except ValueError as exc:
            raise refused(str(exc)) from exc
        self.stdout.write(f"created user {user.get_username()}")
        if tenant is not None:
            membership_set(user=user, tenant=tenant, role=options["role"])
            self.stdout.write(f"{user.get_username()} is {options['role']} of {tenant.slug}")

    def _role(self, options: dict[str, Any]) -> None:
        user = user_named(options["username"])
        tenant = tenant_named(options["tenant"])
        if options["role"] == "none":
            if not membership_remove(user=user, tenant=tenant):
                raise refused(f"{user.get_username()} has no role in {tenant.slug}")
            self.stdout.write(f"{user.get_username()} has no role in {tenant.slug} now")
            return
        membership_set(user=user, tenant=tenant, role=options["role"])
        self.stdout.write(f"{user.get_username()} is {options['role']} of {tenant.slug}")

    def _list(self, options: dict[str, Any]) -> None:
        users = get_user_model().objects.order_by("username")
        memberships = Membership.objects.select_related("tenant", "user")
        if options["tenant"]:
            tenant = tenant_named(options["tenant"])
            memberships = memberships.filter(tenant=tenant)
            users = users.filter(memberships__tenant=tenant)
        roles: dict[int, list[str]] = {}
        for m in memberships.order_by("tenant__slug"):
            roles.setdefault(m.user_id, []).append(f"{m.tenant.slug}:{m.role}")
        rows = [
            {
                "username": u.get_username(),
                "active": u.is_active,
                "superuser": u.is_superuser,
                "roles": " ".join(roles.get(u.pk, [])),
            }
            for u in users
        ]
        write_rows(self, rows, as_json=options["json"])
