"""Helpers for the HTTP API tests: users and tokens made without the costly hashing."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from accounts.services import membership_set, tenant_get_or_create


def person(username: str, tenant_slug: str, role: str) -> Any:
    """A user with a role; no password (hashing one costs seconds on a loaded machine)."""
    user = get_user_model().objects.create(username=username)
    membership_set(user=user, tenant=tenant_get_or_create(slug=tenant_slug), role=role)
    return user


def fast_cli_application() -> None:
    """Create the CLI's OAuth2 application without hashing a client secret (seconds each)."""
    from oauth2_provider.models import get_application_model

    from accounts.services import CLI_APPLICATION_NAME

    model = get_application_model()
    model.objects.get_or_create(
        name=CLI_APPLICATION_NAME,
        defaults={
            "client_type": model.CLIENT_CONFIDENTIAL,
            "authorization_grant_type": model.GRANT_CLIENT_CREDENTIALS,
            "hash_client_secret": False,
        },
    )
