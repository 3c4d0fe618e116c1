"""The access marker: a version number that moves whenever an input of an access decision does.

Live sessions keep the decision they were given at Connect (`accounts.access.document_policy`)
for as long as they live. Rather than re-deciding every session every few seconds, a process
reads this marker once per interval and re-decides only the sessions whose inputs moved
(replication/services/sessions.py, docs/protocol.md section 9).

The scheme, on the `AccessMarker` table:

- The row `*` is a counter: every change adds one to it, so a process that reads the same
  number as last time knows that nothing changed (one query, however many sessions).
- Every change also names the scopes it touches and stamps them with the counter's new value:
  `user:<id>` (the user, their role in any tenant, their groups), `collection:<tenant id>/<name>`
  (grants on the collection, its key rules, the collection itself), `tenant:<id>` (a deleted
  tenant) and `everyone`. A session depends on the four scopes `session_scopes` gives; it needs a
  new decision when one of them carries a number above the counter value its decision was made
  after.
- The counter row is updated in the same transaction as the change: the row lock orders
  concurrent changes, and a reader that sees value N also sees every change up to N.

Every write to the inputs of `accounts.access` must call `access_changed`. The receivers below do
it for every save and delete of memberships, key rules, collections, tenants, users, users'
groups and guardian object permissions on collections, whether made by `accounts.services`, the
admin, a cascade or `QuerySet.delete()`. A write that sends no signal (`QuerySet.update()`,
`bulk_create()`, guardian's `assign_perm` to many users or objects at once, raw SQL) must call
`access_changed` itself. Token revocation needs nothing: sessions look their tokens up directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import F, Model
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from accounts.access import collection_model
from accounts.models import AccessMarker, KeyRule, Membership, Tenant

COUNTER = "*"
EVERYONE = "everyone"

# Rows per IN (...) list: SQLite's variable limit as Django knows it, else a generous batch.
MAX_IDS_PER_QUERY = 5000


def user_scope(user_id: int) -> str:
    return f"user:{user_id}"


def tenant_scope(tenant_id: int) -> str:
    return f"tenant:{tenant_id}"


def collection_scope(tenant_id: int, collection_name: str) -> str:
    return f"collection:{tenant_id}/{collection_name}"


def session_scopes(*, user_id: int, tenant_id: int, collection_name: str) -> tuple[str, ...]:
    """The scopes whose changes may change what `user_id` may do in the collection."""
    return (
        EVERYONE,
        tenant_scope(tenant_id),
        collection_scope(tenant_id, collection_name),
        user_scope(user_id),
    )


def batch_size(using: str = DEFAULT_DB_ALIAS) -> int:
    """How many values one `field__in` list may hold on this database."""
    limit = connections[using].features.max_query_params
    return min(MAX_IDS_PER_QUERY, limit - 10) if limit else MAX_IDS_PER_QUERY


# --- writing and reading the marker --------------------------------------------------------


def access_changed(*, scopes: Iterable[str], using: str = DEFAULT_DB_ALIAS) -> int | None:
    """Record that what the `scopes` may do changed; return the counter's new value.

    Call it inside the transaction of the change (signal receivers are): the marker and the
    change then become visible together. Three queries.
    """
    wanted = sorted(set(scopes))
    if not wanted:
        return None
    markers = AccessMarker.objects.using(using)
    counter = markers.filter(scope=COUNTER)
    with transaction.atomic(using=using, savepoint=False):
        if not counter.update(version=F("version") + 1):
            markers.bulk_create([AccessMarker(scope=COUNTER, version=0)], ignore_conflicts=True)
            counter.update(version=F("version") + 1)
        version = counter.values_list("version", flat=True).get()
        markers.bulk_create(
            [AccessMarker(scope=scope, version=version) for scope in wanted],
            update_conflicts=True,
            unique_fields=["scope"],
            update_fields=["version"],
        )
    return version


def access_version(*, using: str = DEFAULT_DB_ALIAS) -> int:
    """The counter: how many access changes there have been (one query)."""
    found = (
        AccessMarker.objects.using(using)
        .filter(scope=COUNTER)
        .values_list("version", flat=True)
        .first()
    )
    return found or 0


def access_versions(
    *, scopes: Iterable[str], after: int, using: str = DEFAULT_DB_ALIAS
) -> dict[str, int]:
    """Of `scopes`, those changed after counter value `after`, with their latest value."""
    wanted = sorted(set(scopes))
    size = batch_size(using)
    found: dict[str, int] = {}
    for start in range(0, len(wanted), size):
        rows = AccessMarker.objects.using(using).filter(
            scope__in=wanted[start : start + size], version__gt=after
        )
        found.update(rows.values_list("scope", "version"))
    return found


# --- the receivers: every signal-sending write of an access input bumps the marker ---------

ScopesOf = Callable[[Mapping[str, Any]], list[str]]


def _watch(
    model: type[Model], fields: tuple[str, ...], scopes_of: ScopesOf, *, on_create: bool
) -> None:
    """Bump the scopes of `model`'s rows on save and delete; a save that moves a row (another
    user, tenant or collection) bumps the scopes it had before as well as its new ones."""
    uid = f"accounts.access_changes.{model._meta.label}"

    def values(instance: Model) -> dict[str, Any]:
        return {name: getattr(instance, name) for name in fields}

    def before_save(sender: Any, instance: Model, using: str, **kwargs: Any) -> None:
        before = None
        if not instance._state.adding and instance.pk is not None:
            before = (
                sender._base_manager.using(using).filter(pk=instance.pk).values(*fields).first()
            )
        instance.__dict__["_access_before"] = before

    def saved(sender: Any, instance: Model, created: bool, using: str, **kwargs: Any) -> None:
        before = instance.__dict__.pop("_access_before", None)
        if created and not on_create:
            return
        scopes = scopes_of(values(instance)) + (scopes_of(before) if before else [])
        access_changed(scopes=scopes, using=using)

    def deleted(sender: Any, instance: Model, using: str, **kwargs: Any) -> None:
        access_changed(scopes=scopes_of(values(instance)), using=using)

    pre_save.connect(before_save, sender=model, weak=False, dispatch_uid=uid)
    post_save.connect(saved, sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(deleted, sender=model, weak=False, dispatch_uid=uid)


def _user_saved(
    sender: Any, instance: Any, created: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    # A new user has no session yet; a login only stamps last_login.
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    access_changed(scopes=[user_scope(instance.pk)], using=using)


def _user_deleted(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    access_changed(scopes=[user_scope(instance.pk)], using=using)


def _groups_changed(
    sender: Any,
    instance: Any,
    action: str,
    reverse: bool,
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    """user.groups.add/remove/clear, and group.user_set.add/remove/clear (reverse)."""
    if action == "pre_clear" and reverse:
        members = get_user_model()._default_manager.using(using).filter(groups=instance)
        instance.__dict__["_access_members"] = list(members.values_list("pk", flat=True))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        user_ids: Iterable[Any] = [instance.pk]
    elif action == "post_clear":
        user_ids = instance.__dict__.pop("_access_members", [])
    else:
        user_ids = pk_set or []
    access_changed(scopes=[user_scope(pk) for pk in user_ids], using=using)


def _object_permission_changed(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """A guardian grant on a collection given or taken (to a user or to a group)."""
    model = collection_model()
    if instance.content_type_id != ContentType.objects.db_manager(using).get_for_model(model).pk:
        return
    found = (
        model._base_manager.using(using)
        .filter(pk=instance.object_pk)
        .values_list("tenant_id", "name")
        .first()
    )
    if found is not None:
        access_changed(scopes=[collection_scope(*found)], using=using)


def _tenant_deleted(sender: Any, instance: Tenant, using: str, **kwargs: Any) -> None:
    access_changed(scopes=[tenant_scope(instance.pk)], using=using)


def connect_receivers() -> None:
    """Connect the receivers (AccountsConfig.ready)."""

    _watch(Membership, ("user_id",), lambda row: [user_scope(row["user_id"])], on_create=True)
    _watch(
        KeyRule,
        ("tenant_id", "collection_name"),
        lambda row: [collection_scope(row["tenant_id"], row["collection_name"])],
        on_create=True,
    )
    # A new collection changes nobody's access: grants on it can only come after it.
    _watch(
        collection_model(),
        ("tenant_id", "name"),
        lambda row: [collection_scope(row["tenant_id"], row["name"])],
        on_create=False,
    )
    post_delete.connect(_tenant_deleted, sender=Tenant, dispatch_uid="accounts.access.tenant")
    user_model = get_user_model()
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="accounts.access.user")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="accounts.access.user")
    m2m_changed.connect(
        _groups_changed, sender=user_model.groups.through, dispatch_uid="accounts.access.groups"
    )
    for perms in (get_user_obj_perms_model(), get_group_obj_perms_model()):
        uid = f"accounts.access.{perms._meta.label}"
        post_save.connect(_object_permission_changed, sender=perms, dispatch_uid=uid)
        post_delete.connect(_object_permission_changed, sender=perms, dispatch_uid=uid)
