"""Collection permissions (django-guardian) and key rules, for scripts and operators."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandParser

from accounts.access import System
from accounts.management.commands._cli import (
    group_named,
    refused,
    tenant_named,
    user_named,
    write_rows,
)
from accounts.models import KeyRule, Tenant
from accounts.services import (
    collection_perm_grant,
    collection_perm_list,
    collection_perm_revoke,
    key_rule_add,
    key_rule_remove,
)

PERMS = ["read", "write", "administer"]
ACTOR = System("command datagate_grant")


def _collection(parser: CommandParser) -> None:
    parser.add_argument("collection", metavar="TENANT/COLLECTION")


def _subject(parser: CommandParser, *, required: bool) -> None:
    who = parser.add_mutually_exclusive_group(required=required)
    who.add_argument("--user", help="a user name")
    who.add_argument("--group", help="a group name (created for a grant if missing)")


class Command(BaseCommand):
    help = (
        "Grant collection permissions and key rules. "
        "`grant TENANT/COLLECTION PERM (--user U | --group G)` and `revoke ...` with PERM one of "
        "read, write, administer (a grant creates a collection that does not exist yet, as a "
        "rule may name one); "
        "`rule TENANT/COLLECTION --pattern GLOB (--allow | --deny) --actions read,write,delete "
        "[--user U | --group G] [--position N]` (no user or group: everyone; `{username}` in "
        "the pattern is the asking user's name; rules are tried by ascending position, the "
        "first match decides, see docs/access.md); `unrule RULE_ID`; "
        "`list TENANT/COLLECTION [--json]`. Exit status 0 done, 1 refused, 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        for name, text in (("grant", "grant a permission"), ("revoke", "revoke a permission")):
            sub = actions.add_parser(name, help=text)
            _collection(sub)
            sub.add_argument("perm", choices=PERMS)
            _subject(sub, required=True)
        rule = actions.add_parser("rule", help="add a key rule")
        _collection(rule)
        rule.add_argument("--pattern", required=True, help="glob on document ids")
        effect = rule.add_mutually_exclusive_group(required=True)
        effect.add_argument("--allow", action="store_const", const="allow", dest="effect")
        effect.add_argument("--deny", action="store_const", const="deny", dest="effect")
        rule.add_argument("--actions", required=True, help="comma-separated: read, write, delete")
        rule.add_argument("--position", type=int, default=100, help="lower is tried first")
        _subject(rule, required=False)
        unrule = actions.add_parser("unrule", help="remove a key rule by its id")
        unrule.add_argument("rule_id", type=int)
        listing = actions.add_parser("list", help="list a collection's grants and key rules")
        _collection(listing)
        for sub in actions.choices.values():
            sub.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except (LookupError, ValueError) as exc:
            raise refused(str(exc)) from exc
        except ValidationError as exc:
            raise refused("; ".join(exc.messages)) from exc

    def _split(self, options: dict[str, Any]) -> tuple[Tenant, str]:
        slug, sep, name = options["collection"].partition("/")
        if not sep or not name:
            raise refused(
                f"name the collection as TENANT/COLLECTION, got {options['collection']!r}"
            )
        return tenant_named(slug), name

    def _who(self, options: dict[str, Any], *, create_group: bool) -> dict[str, Any]:
        if options.get("user"):
            return {"user": user_named(options["user"])}
        if options.get("group"):
            return {"group": group_named(options["group"], create=create_group)}
        return {}

    def _grant(self, options: dict[str, Any]) -> None:
        tenant, name = self._split(options)
        who = self._who(options, create_group=True)
        collection_perm_grant(
            tenant=tenant,
            collection_name=name,
            perm=options["perm"],
            create_collection=True,
            actor=ACTOR,
            **who,
        )
        self._done(options, granted=options["perm"], collection=f"{tenant.slug}/{name}")

    def _revoke(self, options: dict[str, Any]) -> None:
        tenant, name = self._split(options)
        who = self._who(options, create_group=False)
        collection_perm_revoke(
            tenant=tenant, collection_name=name, perm=options["perm"], actor=ACTOR, **who
        )
        self._done(options, revoked=options["perm"], collection=f"{tenant.slug}/{name}")

    def _rule(self, options: dict[str, Any]) -> None:
        tenant, name = self._split(options)
        rule = key_rule_add(
            tenant=tenant,
            collection_name=name,
            pattern=options["pattern"],
            effect=options["effect"],
            actions=[a.strip() for a in options["actions"].split(",") if a.strip()],
            position=options["position"],
            actor=ACTOR,
            **self._who(options, create_group=True),
        )
        self._done(options, added_rule=rule.pk, rule=str(rule))

    def _unrule(self, options: dict[str, Any]) -> None:
        key_rule_remove(rule_id=options["rule_id"], actor=ACTOR)
        self._done(options, removed_rule=options["rule_id"])

    def _done(self, options: dict[str, Any], **result: Any) -> None:
        """`granted read on acme/notes` for people, one JSON object with --json."""
        if options.get("json"):
            self.stdout.write(json.dumps(result, default=str))
            return
        words = {
            "granted": lambda r: f"granted {r['granted']} on {r['collection']}",
            "revoked": lambda r: f"revoked {r['revoked']} on {r['collection']}",
            "added_rule": lambda r: f"added rule {r['added_rule']}: {r['rule']}",
            "removed_rule": lambda r: f"removed rule {r['removed_rule']}",
        }
        self.stdout.write(words[next(iter(result))](result))

    def _list(self, options: dict[str, Any]) -> None:
        tenant, name = self._split(options)
        try:
            grants = collection_perm_list(tenant=tenant, collection_name=name)
        except LookupError:
            grants = []  # rules may be written before their collection exists
        rows: list[dict[str, Any]] = [
            {"kind": "grant", "id": "", "position": "", "subject": f"{kind} {who}", "what": perm}
            for kind, who, perm in grants
        ]
        for rule in KeyRule.objects.filter(tenant=tenant, collection_name=name):
            rows.append(
                {
                    "kind": "rule",
                    "id": rule.pk,
                    "position": rule.position,
                    "subject": rule.subject,
                    "what": f"{rule.effect} {','.join(rule.actions)} {rule.pattern}",
                }
            )
        write_rows(self, rows, as_json=options["json"])
