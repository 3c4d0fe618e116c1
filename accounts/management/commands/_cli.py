"""Shared bits of the accounts commands: finding users, tenants and groups, printing tables.

Commands never prompt. Exit status: 0 done, 1 refused (the message says why), 2 bad usage.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import CommandError

from accounts.models import Tenant

EXIT_REFUSED = 1


def refused(message: str) -> CommandError:
    return CommandError(message, returncode=EXIT_REFUSED)


def tenant_named(slug: str) -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise refused(f"no tenant {slug!r}")
    return tenant


def user_named(username: str) -> Any:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise refused(f"no user {username!r}")
    return user


def group_named(name: str, *, create: bool = False) -> Group:
    group = Group.objects.filter(name=name).first()
    if group is None and create:
        group = Group.objects.create(name=name)
    if group is None:
        raise refused(f"no group {name!r}")
    return group


def write_rows(command: Any, rows: list[dict[str, Any]], *, as_json: bool) -> None:
    """Rows as JSON (one array) or as tab-separated lines with a header line."""
    if as_json:
        command.stdout.write(json.dumps(rows, default=str))
        return
    if not rows:
        return
    columns = list(rows[0])
    command.stdout.write("\t".join(columns))
    for row in rows:
        command.stdout.write("\t".join("" if row[c] is None else str(row[c]) for c in columns))
