"""Every access decision in DataGate, in one place.

Each `access_*` function answers one question with a bool, one condition a line. Callers (the
sync consumer, the topics consumer, the console, the HTTP API) turn a False into their own
error code. A collection the user may not read must look exactly like one that does not exist,
so callers report both as "collection not found".

How a decision is made, in this order (docs/access.md says the same for operators):

1. **Who.** No user, an anonymous or an inactive user may do nothing. A superuser is a tenant
   admin everywhere.
2. **Tenant role** (the base layer): every member of the tenant (reader, writer, admin) may
   read its collections; writers and admins may write, delete and create collections; admins
   administer.
3. **Collection grants** (django-guardian object permissions on `replication.Collection`,
   given to the user or to one of their groups) add to the role: `read_collection` lets
   read, `write_collection` lets read and write, `administer_collection` lets everything on
   that one collection, also to users who are not members of the tenant. A collection of
   another tenant than the one asked about grants nothing.
4. **Key rules** (`accounts.models.KeyRule`) narrow or reopen single documents, within what
   steps 2-3 allow (a rule never grants more than the collection level does). Tenant admins,
   collection administrators and superusers are not subject to them. The rules of the
   collection that name the user, one of the user's groups, or everyone, and the action
   (read, write or delete), are tried in ascending `position` (ties: deny before allow, then
   the older rule first); the first whose pattern matches the whole document id decides.
   `{username}` in a pattern is the asking user's name; `*` matches any characters, `/`
   included; `?` one character; `[abc]` one of a set. Matching is case-sensitive.
5. **No rule matches**: the collection-level answer stands.

Scopes of the OAuth2 token (`read`, `write`, `topics`) are checked by `access_scope` in
addition to all of the above: a token limits what its user may do, it never adds to it.

Live sessions keep a decision until an input of it changes: every write to a membership, a
grant, a key rule, a user or their groups moves the access marker (accounts/access_changes.py),
and a write that sends no Django signal must move it itself.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from guardian.shortcuts import get_perms
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from accounts.models import KeyRule, Membership, Role, RuleEffect, Tenant

# Guardian permission codenames on replication.Collection (its Meta.permissions).
PERM_READ = "read_collection"
PERM_WRITE = "write_collection"
PERM_ADMINISTER = "administer_collection"
COLLECTION_PERMISSIONS = (PERM_READ, PERM_WRITE, PERM_ADMINISTER)
READ_GRANTS = frozenset(COLLECTION_PERMISSIONS)
WRITE_GRANTS = frozenset({PERM_WRITE, PERM_ADMINISTER})

ACTIONS = ("read", "write", "delete")


@dataclass(frozen=True, slots=True)
class System:
    """The server itself acting for an internal job (seeding, an import, a test's fixture),
    not for any user: the write services take it, or a user, as their required `actor`.

    It passes every access decision, so only code that runs without a user (management
    commands, migrations, tests) may name it; a view or a consumer always has a user. The
    purpose says which job it is, in code and in reviews.
    """

    purpose: str

    def __post_init__(self) -> None:
        if not self.purpose:
            raise ValueError("System needs a purpose")


@dataclass(frozen=True, slots=True)
class Bearer:
    """A user acting through an OAuth2 token (a replication session, a CouchDB request): what
    the user may do, limited to the token's scopes (`access_scope`).

    The write services take it as their `actor` like a user: a change needs the token's
    `write` scope (DG-1002 without it) as well as the user's own right.
    """

    user: Any
    scopes: frozenset[str]


DocumentPredicate = Callable[[str], bool]


def collection_model() -> Any:
    """`replication.Collection`, resolved by name so that accounts never imports replication."""
    return apps.get_model("replication", "Collection")


def _active(user: Any) -> bool:
    return user is not None and user.is_authenticated and user.is_active


def membership_role(*, user: Any, tenant: Tenant) -> str | None:
    """The user's role in the tenant, or None."""
    if not _active(user):
        return None
    if user.is_superuser:
        return Role.ADMIN
    return (
        Membership.objects.filter(user=user, tenant=tenant).values_list("role", flat=True).first()
    )


def collection_lookup(*, tenant: Tenant, collection_name: str, collection: Any = None) -> Any:
    """The collection object: the one given, else the tenant's collection of that name, or None."""
    if collection is not None:
        return collection
    return collection_model().objects.filter(tenant=tenant, name=collection_name).first()


def collection_grants(*, user: Any, tenant: Tenant, collection: Any) -> frozenset[str]:
    """The guardian permission codenames the user holds on the collection (own or by group)."""

    if collection is None or not _active(user):
        return frozenset()
    if collection.tenant_id != tenant.pk:
        return frozenset()
    return frozenset(get_perms(user, collection))


def _grants(*, user: Any, tenant: Tenant, collection_name: str, collection: Any) -> frozenset[str]:
    found = collection_lookup(tenant=tenant, collection_name=collection_name, collection=collection)
    return collection_grants(user=user, tenant=tenant, collection=found)


# --- tenants and collections ---------------------------------------------------------------


def tenant_roles(*, user: Any) -> dict[Tenant, str]:
    """Every tenant the user may read, with the user's role in each (one query)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return {}
    if user.is_superuser:
        return {tenant: Role.ADMIN for tenant in Tenant.objects.all()}
    memberships = Membership.objects.filter(user=user).select_related("tenant")
    return {m.tenant: m.role for m in memberships.order_by("tenant__slug")}


def access_server_admin(*, user: Any) -> bool:
    """Server-wide operator tools (maintenance runs of every tenant): superusers only."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    return bool(user.is_superuser)


def access_tenant_read(*, user: Any, tenant: Tenant) -> bool:
    return membership_role(user=user, tenant=tenant) is not None


def access_tenant_admin(*, user: Any, tenant: Tenant) -> bool:
    return membership_role(user=user, tenant=tenant) == Role.ADMIN


def access_collection_create(*, user: Any, tenant: Tenant) -> bool:
    role = membership_role(user=user, tenant=tenant)
    return role in (Role.ADMIN, Role.WRITER)


def access_collection_read(
    *, user: Any, tenant: Tenant, collection_name: str, collection: Any = None
) -> bool:
    if membership_role(user=user, tenant=tenant) is not None:
        return True
    grants = _grants(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return bool(grants & READ_GRANTS)


def access_collection_write(
    *, user: Any, tenant: Tenant, collection_name: str, collection: Any = None
) -> bool:
    if membership_role(user=user, tenant=tenant) in (Role.ADMIN, Role.WRITER):
        return True
    grants = _grants(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return bool(grants & WRITE_GRANTS)


def access_collection_admin(
    *, user: Any, tenant: Tenant, collection_name: str, collection: Any = None
) -> bool:
    if membership_role(user=user, tenant=tenant) == Role.ADMIN:
        return True
    grants = _grants(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return PERM_ADMINISTER in grants


def access_scope(*, scopes: Iterable[str], scope: str) -> bool:
    """Whether an OAuth2 token's scopes include `scope` (`read`, `write` or `topics`)."""
    return scope in frozenset(scopes)


# --- documents: the policy of one user on one collection -----------------------------------


@dataclass(frozen=True)
class CompiledRules:
    """The key rules for one action, compiled into one regular expression.

    Each rule is one alternative, named `a<n>` (allow) or `d<n>` (deny), in evaluation
    order; Python's regex engine tries alternatives left to right, so the first alternative
    that matches the whole id is the first matching rule.
    """

    regex: re.Pattern[str] | None

    def allows(self, doc_id: str) -> bool:
        if self.regex is None:
            return True
        match = self.regex.fullmatch(doc_id)
        if match is None:
            return True
        return (match.lastgroup or "a").startswith("a")


NO_RULES = CompiledRules(regex=None)


def _rule_regex(pattern: str, username: str) -> str:
    filled = pattern.replace("{username}", glob.escape(username))
    # fnmatch.translate gives "(?s:...)\Z"; fullmatch needs no anchor, and \Z would stop
    # the alternation from trying the next rule.
    translated = fnmatch.translate(filled)
    return translated.removesuffix(r"\Z")


def rules_compile(rules: Iterable[KeyRule], *, username: str) -> CompiledRules:
    parts = []
    for index, rule in enumerate(rules):
        name = ("a" if rule.effect == RuleEffect.ALLOW else "d") + str(index)
        parts.append(f"(?P<{name}>{_rule_regex(rule.pattern, username)})")
    if not parts:
        return NO_RULES
    return CompiledRules(regex=re.compile("|".join(parts)))


@dataclass(frozen=True)
class DocumentPolicy:
    """What one user may do with the documents of one collection, decided once.

    Build it with `document_policy` once per session or request and ask it per id; a
    session rebuilds it when permissions may have changed.
    """

    can_read: bool
    can_write: bool
    read_rules: CompiledRules = NO_RULES
    write_rules: CompiledRules = NO_RULES
    delete_rules: CompiledRules = NO_RULES

    def may_read(self, doc_id: str) -> bool:
        return self.can_read and self.read_rules.allows(doc_id)

    def may_write(self, doc_id: str) -> bool:
        return self.can_write and self.write_rules.allows(doc_id)

    def may_delete(self, doc_id: str) -> bool:
        return self.can_write and self.delete_rules.allows(doc_id)

    @property
    def read_signature(self) -> tuple[bool, str | None]:
        """Equal signatures mean the same readable set: sessions compare them on re-checks."""
        regex = self.read_rules.regex
        return (self.can_read, regex.pattern if regex is not None else None)

    @property
    def read_filter(self) -> DocumentPredicate | None:
        """None when every document may be read; else a predicate on ids."""
        if not self.can_read:
            return _read_nothing
        if self.read_rules.regex is None:
            return None
        return self.read_rules.allows


def _read_nothing(doc_id: str) -> bool:
    return False


def document_policy(
    *, user: Any, tenant: Tenant, collection_name: str, collection: Any = None
) -> DocumentPolicy:
    """Compile the user's access to the collection's documents (the order in the docstring).

    Its inputs (the tenant role, the collection grants, the key rules) are read in one query
    (`_policy_inputs`): a Connect decides with this, and asking them apart was four queries
    the ORM composed anew each time (bench/RESULTS.md, "the connect path, profiled").
    """
    if not _active(user):
        return DocumentPolicy(can_read=False, can_write=False)
    if user.is_superuser:  # a tenant admin everywhere: no grant or rule changes that
        return DocumentPolicy(can_read=True, can_write=True)
    found = collection_lookup(tenant=tenant, collection_name=collection_name, collection=collection)
    role, grants, rules = _policy_inputs(
        user=user, tenant=tenant, collection_name=collection_name, collection=found
    )
    can_read = role is not None or bool(grants & READ_GRANTS)
    can_write = role in (Role.ADMIN, Role.WRITER) or bool(grants & WRITE_GRANTS)
    exempt = role == Role.ADMIN or PERM_ADMINISTER in grants
    if exempt or not can_read:
        return DocumentPolicy(can_read=can_read, can_write=can_write)
    username = user.get_username()
    return DocumentPolicy(
        can_read=can_read,
        can_write=can_write,
        read_rules=rules_compile([r for r in rules if r.for_read], username=username),
        write_rules=rules_compile([r for r in rules if r.for_write], username=username),
        delete_rules=rules_compile([r for r in rules if r.for_delete], username=username),
    )


def _policy_inputs(
    *, user: Any, tenant: Tenant, collection_name: str, collection: Any
) -> tuple[str | None, frozenset[str], list[KeyRule]]:
    """The inputs of an active, non-superuser user's policy, in one query: their role in the
    tenant (`membership_role`), their grants on the collection, own or by group
    (`collection_grants`, as guardian's `get_perms` finds them), and the collection's key rules
    that name them, one of their groups or everyone, in evaluation order.

    One UNION ALL of plain rows, each tagged with what it is. Only quoted names of our own and
    the installed apps' tables and columns go into the text; every value is a parameter.
    """
    q = connection.ops.quote_name
    through = get_user_model().groups.through._meta
    # The ids of the user's groups, a subquery of two branches below.
    my_groups = (
        f"SELECT {q(through.get_field('group').column)} FROM {q(through.db_table)} "  # noqa: S608
        f"WHERE {q(through.get_field('user').column)} = %s"
    )
    parts = [
        f"SELECT 'role', {q('role')}, 0, '', FALSE, FALSE, FALSE, 0 "  # noqa: S608
        f"FROM {q(Membership._meta.db_table)} WHERE {q('user_id')} = %s AND {q('tenant_id')} = %s"
    ]
    params: list[Any] = [user.pk, tenant.pk]
    if collection is not None and collection.tenant_id == tenant.pk:
        content_type = ContentType.objects.get_for_model(collection_model()).pk
        perm = q(Permission._meta.db_table)
        for model, subject in (
            (get_user_obj_perms_model(), f"{q('user_id')} = %s"),
            (get_group_obj_perms_model(), f"{q('group_id')} IN ({my_groups})"),
        ):
            grant = q(model._meta.db_table)
            parts.append(
                f"SELECT 'grant', {perm}.{q('codename')}, 0, '', FALSE, FALSE, FALSE, 0 "  # noqa: S608
                f"FROM {grant} INNER JOIN {perm} "
                f"ON {perm}.{q('id')} = {grant}.{q('permission_id')} "
                f"WHERE {grant}.{subject} AND {grant}.{q('content_type_id')} = %s "
                f"AND {grant}.{q('object_pk')} = %s"
            )
            params += [user.pk, content_type, str(collection.pk)]
    parts.append(
        f"SELECT 'rule', {q('pattern')}, {q('position')}, {q('effect')}, {q('for_read')}, "  # noqa: S608
        f"{q('for_write')}, {q('for_delete')}, {q('id')} FROM {q(KeyRule._meta.db_table)} "
        f"WHERE {q('tenant_id')} = %s AND {q('collection_name')} = %s AND ({q('user_id')} = %s "
        f"OR ({q('user_id')} IS NULL AND {q('group_id')} IS NULL) "
        f"OR {q('group_id')} IN ({my_groups}))"
    )
    params += [tenant.pk, collection_name, user.pk, user.pk]
    role: str | None = None
    grants: set[str] = set()
    rules: list[KeyRule] = []
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        for kind, value, position, effect, for_read, for_write, for_delete, pk in cursor:
            if kind == "role":
                role = value  # one membership per (user, tenant): a unique constraint
            elif kind == "grant":
                grants.add(value)
            else:
                rules.append(
                    KeyRule(
                        pk=pk,
                        pattern=value,
                        position=position,
                        effect=effect,
                        for_read=bool(for_read),
                        for_write=bool(for_write),
                        for_delete=bool(for_delete),
                    )
                )
    rules.sort(key=lambda r: (r.position, r.effect != RuleEffect.DENY, r.pk))
    return role, frozenset(grants), rules


def access_document_read(
    *, user: Any, tenant: Tenant, collection_name: str, doc_id: str, collection: Any = None
) -> bool:
    policy = document_policy(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return policy.may_read(doc_id)


def access_document_write(
    *, user: Any, tenant: Tenant, collection_name: str, doc_id: str, collection: Any = None
) -> bool:
    policy = document_policy(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return policy.may_write(doc_id)


def access_document_delete(
    *, user: Any, tenant: Tenant, collection_name: str, doc_id: str, collection: Any = None
) -> bool:
    policy = document_policy(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return policy.may_delete(doc_id)


def document_read_filter(
    *, user: Any, tenant: Tenant, collection_name: str, collection: Any = None
) -> DocumentPredicate | None:
    """A predicate on document ids the user may read, decided once per session or request.

    None means "every document of the collection": the fast path, with no per-id check.
    Callers that send documents (pull, live feeds, HTTP reads) apply it to every id.
    """
    policy = document_policy(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    return policy.read_filter


# --- topics -------------------------------------------------------------------------------
# Callers pass the topic's attributes, not the topic: accounts never imports topics.
# A local topic the user may not see must look exactly like one that does not exist.


def access_topic_connect(*, user: Any, tenant: Tenant) -> bool:
    return membership_role(user=user, tenant=tenant) is not None


def access_topic_see(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    if membership_role(user=user, tenant=tenant) is None:
        return False
    return scope == "global" or owner_id == user.pk


def access_topic_create(*, user: Any, tenant: Tenant, scope: str) -> bool:
    role = membership_role(user=user, tenant=tenant)
    return role in (Role.ADMIN, Role.WRITER)


def access_topic_publish(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    role = membership_role(user=user, tenant=tenant)
    if role not in (Role.ADMIN, Role.WRITER):
        return False
    return access_topic_see(user=user, tenant=tenant, scope=scope, owner_id=owner_id)


def access_topic_subscribe(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    return access_topic_see(user=user, tenant=tenant, scope=scope, owner_id=owner_id)


def access_topic_delete(*, user: Any, tenant: Tenant, scope: str, owner_id: int | None) -> bool:
    if not access_topic_see(user=user, tenant=tenant, scope=scope, owner_id=owner_id):
        return False
    if owner_id is not None and owner_id == user.pk:
        return True
    return membership_role(user=user, tenant=tenant) == Role.ADMIN
