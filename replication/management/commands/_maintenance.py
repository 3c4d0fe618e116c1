"""Shared pieces of the maintenance commands: choosing collections by `tenant/name`."""

from __future__ import annotations

from django.core.management.base import CommandError

from replication.maintenance import collections_select
from replication.models import Collection


def collection_names_check(names: list[str]) -> None:
    for name in names:
        tenant, slash, collection = name.partition("/")
        if not (tenant and slash and collection):
            raise CommandError(f"{name!r}: name a collection as tenant/collection")


def collections_from_options(names: list[str] | None) -> list[Collection]:
    """The collections named with --collection (all of them when none is named)."""
    wanted = names or []
    collection_names_check(wanted)
    try:
        return collections_select(names=wanted)
    except KeyError as exc:
        raise CommandError(f"no collection {exc.args[0]!r}") from exc
