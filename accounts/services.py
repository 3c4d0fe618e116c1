"""Writes of the accounts domain: tenants, users, memberships, grants, key rules, OAuth2 tokens.

Commands and the admin are thin shells over these functions. None of them logs a token or
a password.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_groups_with_perms, get_users_with_perms, remove_perm
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_refresh_token_model,
    revoke_access_token,
    set_token_value,
)

from accounts.access import (
    ACTIONS,
    COLLECTION_PERMISSIONS,
    System,
    access_collection_admin,
    access_tenant_admin,
    collection_lookup,
    collection_model,
)
from accounts.audit import audit_record
from accounts.models import KeyRule, Membership, Role, RuleEffect, Tenant

CLI_APPLICATION_NAME = "datagate-cli"


def _audit(
    actor: Any, action: str, target: str, *, tenant: Tenant | None = None, **detail: Any
) -> None:
    """An audit entry when the caller named an actor (accounts/audit.py)."""
    if actor is not None:
        audit_record(actor=actor, action=action, target=target, tenant=tenant, detail=detail)


KNOWN_SCOPES = frozenset(settings.OAUTH2_PROVIDER["SCOPES"])


def tenant_get_or_create(*, slug: str, name: str = "") -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        tenant = Tenant(slug=slug, name=name or slug)
        tenant.full_clean()
        tenant.save()
    return tenant


def membership_set(*, user: Any, tenant: Tenant, role: str, actor: Any = None) -> Membership:
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(Role.values)}")
    with transaction.atomic():
        membership, _ = Membership.objects.update_or_create(
            user=user, tenant=tenant, defaults={"role": role}
        )
        _audit(actor, "member.set", f"{user.get_username()} as {role}", tenant=tenant, role=role)
    return membership


def cli_application() -> Any:
    """The OAuth2 application that command-line tokens are issued to (created on first use)."""
    application_model = get_application_model()
    app = application_model.objects.filter(name=CLI_APPLICATION_NAME).first()
    if app is None:
        app = application_model.objects.create(
            name=CLI_APPLICATION_NAME,
            client_type=application_model.CLIENT_CONFIDENTIAL,
            authorization_grant_type=application_model.GRANT_CLIENT_CREDENTIALS,
            skip_authorization=True,
        )
    return app


@dataclass(frozen=True)
class IssuedTokens:
    """Raw tokens, shown once to whoever asked for them; the database keeps only checksums."""

    access_token: str
    expires: datetime
    scope: str
    refresh_token: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": max(0, int((self.expires - timezone.now()).total_seconds())),
            "scope": self.scope,
        }
        if self.refresh_token is not None:
            out["refresh_token"] = self.refresh_token
        return out


def _check_scopes(scopes: list[str]) -> None:
    unknown = sorted(set(scopes) - KNOWN_SCOPES)
    if unknown:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SCOPES))}"
        )


def token_pair_issue(
    *,
    user: Any,
    scopes: list[str],
    expires_in: int | None = None,
    with_refresh: bool = False,
    application: Any = None,
    family: uuid.UUID | None = None,
    actor: Any = None,
    tenant: Tenant | None = None,
) -> IssuedTokens:
    """Issue an access token (and optionally a refresh token), stored the toolkit's way.

    With an `actor`, the issue is audited (in `tenant`'s log when given)."""
    _check_scopes(scopes)
    lifetime = expires_in if expires_in is not None else settings.DATAGATE["ACCESS_TOKEN_TTL"]
    raw = secrets.token_urlsafe(32)
    raw_refresh = secrets.token_urlsafe(32) if with_refresh else None
    expires = timezone.now() + timedelta(seconds=lifetime)
    app = application if application is not None else cli_application()
    with transaction.atomic():
        access = get_access_token_model()(
            user=user, application=app, expires=expires, scope=" ".join(scopes)
        )
        set_token_value(access, raw)
        access.save()
        if raw_refresh is not None:
            refresh = get_refresh_token_model()(
                user=user, application=app, access_token=access, token_family=family or uuid.uuid4()
            )
            set_token_value(refresh, raw_refresh)
            refresh.save()
        _audit(
            actor,
            "token.issue",
            f"token #{access.pk} for {_name(user)}",
            tenant=tenant,
            scope=" ".join(scopes),
            token_id=access.pk,
        )
    return IssuedTokens(
        access_token=raw, expires=expires, scope=" ".join(scopes), refresh_token=raw_refresh
    )


def access_token_issue(
    *, user: Any, scopes: list[str], expires_in: int | None = None, actor: Any = None
) -> str:
    """Issue a fresh access token for `user` with `scopes`; return the raw token."""
    return token_pair_issue(
        user=user, scopes=scopes, expires_in=expires_in, actor=actor
    ).access_token


def _checksum(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_revoke(*, raw_token: str) -> str:
    """Revoke an access or refresh token (and its pair); say which kind it was.

    Raises LookupError when the token is unknown or already revoked.
    """
    access = get_access_token_model().objects.filter(token_checksum=_checksum(raw_token)).first()
    if access is not None:
        revoke_access_token(access)
        return "access"
    refresh = (
        get_refresh_token_model()
        .objects.filter(token_checksum=_checksum(raw_token), revoked__isnull=True)
        .first()
    )
    if refresh is not None:
        refresh.revoke()
        return "refresh"
    raise LookupError("unknown or already revoked token")


def token_refresh(*, raw_refresh_token: str, expires_in: int | None = None) -> IssuedTokens:
    """Rotate a refresh token issued by `token_pair_issue`, as the toolkit's endpoint does:
    the old refresh token and its access token are revoked, a new pair is issued with the
    same scopes. Applications refresh through `/o/token/` instead.
    """
    model = get_refresh_token_model()
    with transaction.atomic():
        refresh = (
            model.objects.select_for_update()
            .select_related("access_token", "user", "application")
            .filter(token_checksum=_checksum(raw_refresh_token), revoked__isnull=True)
            .first()
        )
        if refresh is None:
            raise LookupError("unknown or revoked refresh token")
        scopes = refresh.access_token.scope.split() if refresh.access_token else ["read"]
        user, app, family = refresh.user, refresh.application, refresh.token_family
        refresh.revoke()
        return token_pair_issue(
            user=user,
            scopes=scopes,
            expires_in=expires_in,
            with_refresh=True,
            application=app,
            family=family,
        )


# --- OAuth2 applications -----------------------------------------------------------------


@dataclass(frozen=True)
class CreatedApplication:
    application: Any
    client_id: str
    client_secret: str | None  # raw, shown once; None for public (PKCE) clients


def application_create(
    *, name: str, owner: Any, kind: str, redirect_uris: str = ""
) -> CreatedApplication:
    """Register an OAuth2 application.

    `kind` "client": a public client app using the authorization code grant with PKCE
    (needs `redirect_uris`). `kind` "service": a confidential service using client
    credentials; its tokens act as `owner` (accounts/tokens.py).
    """
    model = get_application_model()
    secret = secrets.token_urlsafe(32)
    if kind == "client":
        if not redirect_uris.strip():
            raise ValueError("a client application needs at least one redirect URI")
        app = model.objects.create(
            name=name,
            user=owner,
            client_type=model.CLIENT_PUBLIC,
            authorization_grant_type=model.GRANT_AUTHORIZATION_CODE,
            redirect_uris=redirect_uris,
            client_secret=secret,
        )
        return CreatedApplication(application=app, client_id=app.client_id, client_secret=None)
    if kind == "service":
        app = model.objects.create(
            name=name,
            user=owner,
            client_type=model.CLIENT_CONFIDENTIAL,
            authorization_grant_type=model.GRANT_CLIENT_CREDENTIALS,
            client_secret=secret,
        )
        return CreatedApplication(application=app, client_id=app.client_id, client_secret=secret)
    raise ValueError(f"unknown application kind {kind!r}; choose client or service")


# --- tenants and users --------------------------------------------------------------------


def tenant_create(*, slug: str, name: str = "", actor: Any = None) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise ValueError(f"tenant {slug!r} already exists")
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean()
    with transaction.atomic():
        tenant.save()
        _audit(actor, "tenant.create", f"tenant {slug}", tenant=tenant)
    return tenant


def tenant_delete(*, slug: str, actor: Any = None) -> None:
    """Delete a tenant with everything it holds (collections, documents, topics, rules)."""
    with transaction.atomic():
        deleted, _ = Tenant.objects.filter(slug=slug).delete()
        if not deleted:
            raise LookupError(f"no tenant {slug!r}")
        _audit(actor, "tenant.delete", f"tenant {slug}")


def user_create(
    *,
    username: str,
    password: str,
    email: str = "",
    actor: Any = None,
    tenant: Tenant | None = None,
) -> Any:
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        raise ValueError(f"user {username!r} already exists")
    if not password:
        raise ValueError("the password is empty")
    with transaction.atomic():
        user = users.objects.create_user(username=username, password=password, email=email)
        _audit(actor, "user.create", f"user {username}", tenant=tenant)
    return user


def membership_remove(*, user: Any, tenant: Tenant, actor: Any = None) -> bool:
    with transaction.atomic():
        deleted, _ = Membership.objects.filter(user=user, tenant=tenant).delete()
        if deleted:
            _audit(actor, "member.remove", f"{user.get_username()}", tenant=tenant)
    return bool(deleted)


# --- collection grants (django-guardian) and key rules -----------------------------------


def _permission(perm: str) -> str:
    codename = perm if perm.endswith("_collection") else f"{perm}_collection"
    if codename not in COLLECTION_PERMISSIONS:
        choices = ", ".join(p.removesuffix("_collection") for p in COLLECTION_PERMISSIONS)
        raise ValueError(f"unknown permission {perm!r}; choose one of {choices}")
    return f"replication.{codename}"


def _collection_required(*, tenant: Tenant, collection_name: str) -> Any:
    found = collection_lookup(tenant=tenant, collection_name=collection_name)
    if found is None:
        raise LookupError(f"no collection {tenant.slug}/{collection_name}")
    return found


def collection_perm_grant(
    *,
    tenant: Tenant,
    collection_name: str,
    perm: str,
    user: Any = None,
    group: Group | None = None,
    create_collection: bool = False,
    actor: Any = None,
) -> None:
    """Grant `read`, `write` or `administer` on one collection to a user or a group.

    With `create_collection`, a collection that does not exist yet is created first (key rules
    may name one before it exists; a grant then needs the row to hang on)."""

    collection_admin_check(actor=actor, tenant=tenant, collection_name=collection_name)
    codename = _permission(perm)
    subject = _subject(user=user, group=group)
    with transaction.atomic():
        if (
            create_collection
            and collection_lookup(tenant=tenant, collection_name=collection_name) is None
        ):
            model = collection_model()
            model(tenant=tenant, name=collection_name).full_clean()
            model.objects.get_or_create(tenant=tenant, name=collection_name)
        collection = _collection_required(tenant=tenant, collection_name=collection_name)
        assign_perm(codename, subject, collection)
        _audit(
            actor,
            "grant.add",
            f"{perm} on {tenant.slug}/{collection_name} to {_subject_words(user, group)}",
            tenant=tenant,
        )


def collection_perm_revoke(
    *,
    tenant: Tenant,
    collection_name: str,
    perm: str,
    user: Any = None,
    group: Group | None = None,
    actor: Any = None,
) -> None:
    collection_admin_check(actor=actor, tenant=tenant, collection_name=collection_name)
    codename = _permission(perm)
    collection = _collection_required(tenant=tenant, collection_name=collection_name)
    with transaction.atomic():
        remove_perm(codename, _subject(user=user, group=group), collection)
        _audit(
            actor,
            "grant.remove",
            f"{perm} on {tenant.slug}/{collection_name} from {_subject_words(user, group)}",
            tenant=tenant,
        )


def _name(user: Any) -> str:
    return "no user" if user is None else str(user.get_username())


def _subject_words(user: Any, group: Group | None) -> str:
    return f"user {user.get_username()}" if user is not None else f"group {group}"


def _subject(*, user: Any, group: Group | None) -> Any:
    if (user is None) == (group is None):
        raise ValueError("name exactly one user or one group")
    return user if user is not None else group


def collection_perm_list(*, tenant: Tenant, collection_name: str) -> list[tuple[str, str, str]]:
    """(kind, name, permission) for every grant on the collection, users then groups."""

    collection = _collection_required(tenant=tenant, collection_name=collection_name)
    rows: list[tuple[str, str, str]] = []
    users: dict[Any, list[str]] = get_users_with_perms(  # type: ignore[assignment]
        collection, attach_perms=True, with_group_users=False
    )
    for user, perms in sorted(users.items(), key=lambda kv: kv[0].get_username()):
        rows += [("user", user.get_username(), p) for p in sorted(perms)]
    groups: dict[Any, list[str]] = get_groups_with_perms(  # type: ignore[assignment]
        collection, attach_perms=True
    )
    for group, perms in sorted(groups.items(), key=lambda kv: kv[0].name):
        rows += [("group", group.name, p) for p in sorted(perms)]
    return rows


def key_rule_add(
    *,
    tenant: Tenant,
    collection_name: str,
    pattern: str,
    effect: str,
    actions: list[str],
    position: int = 100,
    user: Any = None,
    group: Group | None = None,
    actor: Any = None,
) -> KeyRule:
    """Add a key rule (accounts/access.py gives the evaluation order). No user and no group:
    the rule applies to everyone."""
    collection_admin_check(actor=actor, tenant=tenant, collection_name=collection_name)
    if effect not in RuleEffect.values:
        raise ValueError(f"unknown effect {effect!r}; choose allow or deny")
    unknown = sorted(set(actions) - set(ACTIONS))
    if unknown or not actions:
        raise ValueError(f"actions must be some of {', '.join(ACTIONS)}; got {actions!r}")
    if user is not None and group is not None:
        raise ValueError("name one user, one group, or neither (everyone)")
    rule = KeyRule(
        tenant=tenant,
        collection_name=collection_name,
        pattern=pattern,
        effect=effect,
        position=position,
        user=user,
        group=group,
        **{f"for_{action}": action in actions for action in ACTIONS},
    )
    rule.full_clean()
    with transaction.atomic():
        rule.save()
        _audit(
            actor,
            "rule.add",
            f"rule #{rule.pk} on {tenant.slug}/{collection_name}: {rule}",
            tenant=tenant,
        )
    return rule


def key_rule_remove(*, rule_id: int, actor: Any = None) -> None:
    rule = KeyRule.objects.select_related("tenant").filter(pk=rule_id).first()
    if rule is None:
        raise LookupError(f"no key rule #{rule_id}")
    collection_admin_check(actor=actor, tenant=rule.tenant, collection_name=rule.collection_name)
    with transaction.atomic():
        KeyRule.objects.filter(pk=rule_id).delete()
        _audit(
            actor,
            "rule.remove",
            f"rule #{rule_id} on {rule.tenant.slug}/{rule.collection_name}: {rule}",
            tenant=rule.tenant,
        )


def access_tokens_revoke(
    *,
    user: Any,
    application_id: int | None = None,
    token_id: int | None = None,
    actor: Any = None,
    tenant: Tenant | None = None,
) -> int:
    """Revoke the user's access and refresh tokens (of one OAuth2 application, or all).

    Returns how many access tokens were revoked. Refresh tokens are revoked too, so the app
    cannot quietly mint a new access token; live sessions that use them close at their next
    access re-check (DG-1001).
    """
    access_model = get_access_token_model()
    refresh_model = get_refresh_token_model()
    access = access_model.objects.filter(user=user)
    refresh = refresh_model.objects.filter(user=user, revoked__isnull=True)
    if application_id is not None:
        access = access.filter(application_id=application_id)
        refresh = refresh.filter(application_id=application_id)
    if token_id is not None:  # one access token and its refresh token
        access = access.filter(pk=token_id)
        refresh = refresh.filter(access_token_id=token_id)
    with transaction.atomic():
        refresh.update(revoked=timezone.now())
        _, deleted = access.delete()
        count = int(deleted.get(access_model._meta.label, 0))
        what = f"token #{token_id}" if token_id is not None else f"{count} token(s)"
        _audit(
            actor,
            "token.revoke",
            f"{what} of {_name(user)}",
            tenant=tenant,
            revoked=count,
            application_id=application_id,
        )
    return count


# --- what a tenant admin does from the console (the access door, then the audit log) ------


def _is_user(actor: Any) -> bool:
    return actor is not None and not isinstance(actor, System)


def tenant_admin_check(*, actor: Any, tenant: Tenant) -> None:
    """PermissionDenied unless the actor administers the tenant (a System always may)."""
    if _is_user(actor) and not access_tenant_admin(user=actor, tenant=tenant):
        raise PermissionDenied(f"only {tenant.slug}'s admins may do this")


def collection_admin_check(*, actor: Any, tenant: Tenant, collection_name: str) -> None:
    if _is_user(actor) and not access_collection_admin(
        user=actor, tenant=tenant, collection_name=collection_name
    ):
        raise PermissionDenied(f"only admins of {tenant.slug}/{collection_name} may do this")


def member_add(
    *, actor: Any, tenant: Tenant, username: str, role: str, password: str = ""
) -> tuple[Any, bool]:
    """Give `username` a role in the tenant, creating the account (with `password`) if it does
    not exist; returns (user, created). Tenant admins only."""
    tenant_admin_check(actor=actor, tenant=tenant)
    users = get_user_model()
    with transaction.atomic():
        user = users.objects.filter(username=username).first()
        created = user is None
        if user is None:
            probe = users(username=username)
            probe.clean_fields(exclude=["password"])
            user = user_create(username=username, password=password, actor=actor, tenant=tenant)
        membership_set(user=user, tenant=tenant, role=role, actor=actor)
    return user, created


def member_remove(*, actor: Any, tenant: Tenant, user: Any) -> bool:
    tenant_admin_check(actor=actor, tenant=tenant)
    return membership_remove(user=user, tenant=tenant, actor=actor)


def _member_check(*, actor: Any, tenant: Tenant, user: Any) -> None:
    tenant_admin_check(actor=actor, tenant=tenant)
    if not Membership.objects.filter(user=user, tenant=tenant).exists():
        raise PermissionDenied(f"{user.get_username()} is not a member of {tenant.slug}")


def member_token_issue(
    *, actor: Any, tenant: Tenant, user: Any, scopes: list[str], expires_in: int | None = None
) -> IssuedTokens:
    """A tenant admin issues an access token to one of the tenant's members."""
    _member_check(actor=actor, tenant=tenant, user=user)
    return token_pair_issue(
        user=user, scopes=scopes, expires_in=expires_in, actor=actor, tenant=tenant
    )


def member_token_revoke(*, actor: Any, tenant: Tenant, user: Any, token_id: int | None) -> int:
    """Revoke one of a member's access tokens (None: all of them) with its refresh token."""
    _member_check(actor=actor, tenant=tenant, user=user)
    return access_tokens_revoke(user=user, token_id=token_id, actor=actor, tenant=tenant)


def member_application_create(
    *, actor: Any, tenant: Tenant, owner: Any, name: str, kind: str, redirect_uris: str = ""
) -> CreatedApplication:
    """A tenant admin registers an OAuth2 application owned by one of the tenant's members
    (a service's tokens act as its owner, accounts/tokens.py); audited."""
    _member_check(actor=actor, tenant=tenant, user=owner)
    if not name.strip():
        raise ValueError("the application needs a name")
    with transaction.atomic():
        created = application_create(
            name=name.strip(), owner=owner, kind=kind, redirect_uris=redirect_uris
        )
        _audit(
            actor,
            "application.create",
            f"application {name.strip()} ({kind}) of {owner.get_username()}",
            tenant=tenant,
            client_id=created.client_id,
        )
    return created


def member_application_delete(*, actor: Any, tenant: Tenant, application_id: int) -> str:
    """Delete a member's OAuth2 application with every token issued to it; returns its name."""
    app = get_application_model().objects.select_related("user").filter(pk=application_id).first()
    if app is None or app.user is None:
        raise LookupError(f"no application #{application_id}")
    _member_check(actor=actor, tenant=tenant, user=app.user)
    with transaction.atomic():
        name = app.name
        app.delete()  # its access, refresh and grant rows cascade
        _audit(
            actor,
            "application.delete",
            f"application {name} of {app.user.get_username()}",
            tenant=tenant,
        )
    return str(name)
