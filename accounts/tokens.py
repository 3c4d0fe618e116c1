"""Validating OAuth2 access tokens issued by django-oauth-toolkit, for websockets and HTTP.

The toolkit deletes a revoked access token, so a revoked token and an unknown one look the
same from here: both are "unknown or revoked". Never log the raw token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from oauth2_provider.models import get_access_token_model


@dataclass(frozen=True)
class TokenInfo:
    user: AbstractBaseUser
    scopes: frozenset[str]
    expires: datetime
    token_id: int


class TokenRejected(Exception):
    """The token cannot be used; `reason` is safe to show (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def token_authenticate(raw_token: object) -> TokenInfo:
    """Return who the token belongs to and what it allows, or raise TokenRejected."""
    if not isinstance(raw_token, str) or not raw_token.strip():
        raise TokenRejected("no token given")
    if len(raw_token) > 512:
        raise TokenRejected("malformed token")
    checksum = hashlib.sha256(raw_token.encode()).hexdigest()
    model = get_access_token_model()
    token = model.objects.select_related("user").filter(token_checksum=checksum).first()
    if token is None:
        raise TokenRejected("unknown or revoked token")
    if token.user is None:
        raise TokenRejected("token is not bound to a user")
    if not token.user.is_active:
        raise TokenRejected("user is inactive")
    if token.expires <= timezone.now():
        raise TokenRejected(f"token expired at {token.expires:%Y-%m-%dT%H:%MZ}")
    return TokenInfo(
        user=token.user,
        scopes=frozenset(token.scope.split()),
        expires=token.expires,
        token_id=token.pk,
    )
