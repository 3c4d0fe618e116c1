"""First-start setup for `make run`: an admin account and a demo tenant, and where to log in."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.models import Role
from accounts.services import membership_set, tenant_get_or_create


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # `migrate` ran them just before (make run)
    help = "Create the first admin account (printing its password once) and a demo tenant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")
        parser.add_argument("--username", default="admin")
        parser.add_argument("--log", default="", help="where the server's log goes (printed)")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        username = options["username"]
        console = f"http://{options['host']}:{options['port']}/console/"
        admin = users.objects.filter(username=username).first()
        password = None
        if admin is None and not users.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            admin = users.objects.create_superuser(username=username, password=password, email="")
        tenant = tenant_get_or_create(slug="demo", name="Demo tenant")
        if admin is not None:
            membership_set(user=admin, tenant=tenant, role=Role.ADMIN)
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"DataGate console: {console}"))
        if password:
            self.stdout.write(f"  log in as {username!r} with password {password!r}")
            self.stdout.write(
                f"  (shown once; change it with `python manage.py changepassword {username}`)"
            )
        else:
            self.stdout.write(
                "  log in with your existing admin account "
                "(forgotten? `.venv/bin/python manage.py changepassword admin`)"
            )
        self.stdout.write(
            f"  sync endpoint: ws://{options['host']}:{options['port']}"
            "/ws/datagate/demo/<collection>/"
        )
        self.stdout.write(f"  a token: .venv/bin/python manage.py datagate_token {username}")
        if options["log"]:
            self.stdout.write(f"  server log: {options['log']} (tail -f it); Ctrl-C stops")
        self.stdout.write("")
