"""Writes of the accounts domain: tenants, memberships and OAuth2 tokens."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from oauth2_provider.models import (
    get_access_token_model,
    get_application_model,
    get_refresh_token_model,
)

from accounts.models import Membership, Role, Tenant

CLI_APPLICATION_NAME = "datagate-cli"
KNOWN_SCOPES = frozenset(settings.OAUTH2_PROVIDER["SCOPES"])


def tenant_get_or_create(*, slug: str, name: str = "") -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        tenant = Tenant(slug=slug, name=name or slug)
        tenant.full_clean()
        tenant.save()
    return tenant


def membership_set(*, user: Any, tenant: Tenant, role: str) -> Membership:
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(Role.values)}")
    membership, _ = Membership.objects.update_or_create(
        user=user, tenant=tenant, defaults={"role": role}
    )
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


def access_token_issue(*, user: Any, scopes: list[str], expires_in: int | None = None) -> str:
    """Issue a fresh access token for `user` with `scopes`; return the raw token."""
    unknown = sorted(set(scopes) - KNOWN_SCOPES)
    if unknown:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SCOPES))}"
        )
    lifetime = expires_in if expires_in is not None else settings.DATAGATE["ACCESS_TOKEN_TTL"]
    raw = secrets.token_urlsafe(32)
    with transaction.atomic():
        get_access_token_model().objects.create(
            user=user,
            application=cli_application(),
            token=raw,
            expires=timezone.now() + timedelta(seconds=lifetime),
            scope=" ".join(scopes),
        )
    return raw


def access_tokens_revoke(*, user: Any, application_id: int | None = None) -> int:
    """Revoke the user's access and refresh tokens (of one OAuth2 application, or all).

    Returns how many access tokens were revoked. Refresh tokens are revoked too, so the app
    cannot quietly mint a new access token; sessions already open are not closed by this.
    """
    access_model = get_access_token_model()
    refresh_model = get_refresh_token_model()
    access = access_model.objects.filter(user=user)
    refresh = refresh_model.objects.filter(user=user, revoked__isnull=True)
    if application_id is not None:
        access = access.filter(application_id=application_id)
        refresh = refresh.filter(application_id=application_id)
    with transaction.atomic():
        refresh.update(revoked=timezone.now())
        _, deleted = access.delete()
    return int(deleted.get(access_model._meta.label, 0))
