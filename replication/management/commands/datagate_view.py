"""Data views for scripts and operators: create, change, delete, show, list."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts.access import System
from accounts.management.commands._cli import refused, tenant_named, write_rows
from accounts.models import Tenant
from core.errors import DataGateError
from replication import data_views
from replication.models import DataView

ACTOR = System("command datagate_view")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise refused(f"not JSON: {exc}") from exc


class Command(BaseCommand):
    help = (
        "Manage data views (docs/protocol.md, 'Views'). "
        "`create TENANT/COLLECTION NAME SELECTOR [--fields F,G] [--description TEXT]`, "
        "`update TENANT/COLLECTION NAME SELECTOR [--fields F,G]`, "
        "`delete TENANT/COLLECTION NAME`, `show TENANT/COLLECTION NAME`, "
        "`list TENANT/COLLECTION`. SELECTOR is Mango JSON, e.g. "
        '\'{"status": "open", "owner": "{username}"}\'. Every action takes --json. '
        "Exit status 0 done, 1 refused (DG-41xx, docs/errors.md), 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="create a view")
        update = actions.add_parser("update", help="change a view's definition")
        for sub in (create, update):
            sub.add_argument("collection", metavar="TENANT/COLLECTION")
            sub.add_argument("name")
            sub.add_argument("selector", type=_json, metavar="SELECTOR")
            sub.add_argument("--fields", default="", help="comma-separated fields to project")
            sub.add_argument("--description", default=None)
        delete = actions.add_parser("delete", help="delete a view")
        show = actions.add_parser("show", help="print a view")
        for sub in (delete, show):
            sub.add_argument("collection", metavar="TENANT/COLLECTION")
            sub.add_argument("name")
        listing = actions.add_parser("list", help="list a collection's views")
        listing.add_argument("collection", metavar="TENANT/COLLECTION")
        for sub in (create, update, delete, show, listing):
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
            self.stdout.write(
                " ".join(
                    f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
                    for k, v in result.items()
                )
            )

    def _split(self, options: dict[str, Any]) -> tuple[Tenant, str]:
        slug, sep, name = options["collection"].partition("/")
        if not sep or not name:
            raise refused(
                f"name the collection as TENANT/COLLECTION, got {options['collection']!r}"
            )
        return tenant_named(slug), name

    def _get(self, options: dict[str, Any]) -> DataView:
        tenant, collection = self._split(options)
        return data_views.view_get(
            actor=ACTOR, tenant=tenant, collection_name=collection, name=options["name"]
        )

    def _create(self, options: dict[str, Any]) -> dict[str, Any]:
        tenant, collection = self._split(options)
        view = data_views.view_create(
            actor=ACTOR,
            tenant=tenant,
            collection_name=collection,
            name=options["name"],
            selector=options["selector"],
            fields=_fields(options["fields"]),
            description=options["description"] or "",
        )
        return {"created": str(view), **view_row(view)}

    def _update(self, options: dict[str, Any]) -> dict[str, Any]:
        view = data_views.view_update(
            actor=ACTOR,
            view=self._get(options),
            selector=options["selector"],
            fields=_fields(options["fields"]),
            description=options["description"],
        )
        return {"updated": str(view), **view_row(view)}

    def _delete(self, options: dict[str, Any]) -> dict[str, Any]:
        view = self._get(options)
        data_views.view_delete(actor=ACTOR, view=view)
        return {"deleted": str(view)}

    def _show(self, options: dict[str, Any]) -> dict[str, Any]:
        return view_row(self._get(options))

    def _list(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        tenant, collection = self._split(options)
        views = data_views.views_list(actor=ACTOR, tenant=tenant, collection_name=collection)
        return [view_row(v) for v in views]


def _fields(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def view_row(view: DataView) -> dict[str, Any]:
    return {
        "name": view.name,
        "selector": view.selector,
        "fields": view.fields,
        "version": view.version,
        "description": view.description,
    }
