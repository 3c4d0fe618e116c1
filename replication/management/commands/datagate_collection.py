"""Collections for scripts and operators: create, delete, tombstone TTL and retention, list."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts.access import System
from accounts.management.commands._cli import refused, tenant_named, write_rows
from accounts.models import Tenant
from core.errors import DataGateError
from replication import collection_services
from replication.models import Collection

ACTOR = System("command datagate_collection")


DEFAULT = "default"


def _days(text: str) -> int | str:
    """`7` days, or `default` (the server's knob)."""
    return DEFAULT if text == DEFAULT else int(text)


def _setting(given: int | str | None, current: int | None) -> int | None:
    """An option not given keeps the current value; `default` clears it."""
    if given is None:
        return current
    return None if given == DEFAULT else int(given)


class Command(BaseCommand):
    help = (
        "Manage collections. `create TENANT/COLLECTION [--tombstone-ttl-days N] "
        "[--journal-retention-days N]`, `delete TENANT/COLLECTION --confirm COLLECTION`, "
        "`ttl TENANT/COLLECTION [--tombstone-ttl-days N|default] "
        "[--journal-retention-days N|default]`, `list [TENANT]`. Every action takes --json. "
        "Exit status 0 done, 1 refused (DG-72xx, docs/errors.md), 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="create an empty collection")
        ttl = actions.add_parser("ttl", help="set the tombstone TTL and journal retention")
        for sub, kind in ((create, int), (ttl, _days)):
            sub.add_argument("collection", metavar="TENANT/COLLECTION")
            sub.add_argument("--tombstone-ttl-days", type=kind, default=None)
            sub.add_argument("--journal-retention-days", type=kind, default=None)
        delete = actions.add_parser("delete", help="delete a collection and all it holds")
        delete.add_argument("collection", metavar="TENANT/COLLECTION")
        delete.add_argument("--confirm", required=True, help="the collection's name, again")
        listing = actions.add_parser("list", help="list collections and their settings")
        listing.add_argument("tenant", nargs="?", help="one tenant's (default: all)")
        for sub in (create, ttl, delete, listing):
            sub.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = getattr(self, f"_{options['action']}")(options)
        except DataGateError as exc:
            raise refused(exc.text) from exc
        if options["action"] == "list":
            write_rows(self, result, as_json=options["json"])
        elif options["json"]:
            self.stdout.write(json.dumps(result, default=str))
        else:
            self.stdout.write(" ".join(f"{k}={v}" for k, v in result.items()))

    def _split(self, options: dict[str, Any]) -> tuple[Tenant, str]:
        slug, sep, name = options["collection"].partition("/")
        if not sep or not name:
            raise refused(
                f"name the collection as TENANT/COLLECTION, got {options['collection']!r}"
            )
        return tenant_named(slug), name

    def _create(self, options: dict[str, Any]) -> dict[str, Any]:
        tenant, name = self._split(options)
        collection = collection_services.collection_create(
            actor=ACTOR,
            tenant=tenant,
            name=name,
            tombstone_ttl_days=options["tombstone_ttl_days"],
            journal_retention_days=options["journal_retention_days"],
        )
        return {"created": str(collection), **_row(collection)}

    def _ttl(self, options: dict[str, Any]) -> dict[str, Any]:
        tenant, name = self._split(options)
        collection = collection_services.collection_for_admin(actor=ACTOR, tenant=tenant, name=name)
        ttl, retention = options["tombstone_ttl_days"], options["journal_retention_days"]
        collection_services.collection_settings_set(
            actor=ACTOR,
            collection=collection,
            tombstone_ttl_days=_setting(ttl, collection.tombstone_ttl_days),
            journal_retention_days=_setting(retention, collection.journal_retention_days),
        )
        return {"updated": str(collection), **_row(collection)}

    def _delete(self, options: dict[str, Any]) -> dict[str, Any]:
        tenant, name = self._split(options)
        collection = collection_services.collection_for_admin(actor=ACTOR, tenant=tenant, name=name)
        counts = collection_services.collection_delete(
            actor=ACTOR, collection=collection, confirm=options["confirm"]
        )
        return {"deleted": f"{tenant.slug}/{name}", **counts}

    def _list(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        collections = Collection.objects.select_related("tenant")
        if options["tenant"]:
            collections = collections.filter(tenant=tenant_named(options["tenant"]))
        return [_row(c) for c in collections]


def _row(collection: Collection) -> dict[str, Any]:
    return {
        "collection": str(collection),
        "last_seq": collection.last_seq,
        "tombstone_ttl_days": collection.effective_tombstone_ttl_days,
        "tombstone_ttl_own": collection.tombstone_ttl_days is not None,
        "journal_retention_days": collection.effective_journal_retention_days,
        "journal_retention_own": collection.journal_retention_days is not None,
    }
