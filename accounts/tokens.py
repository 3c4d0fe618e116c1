"""Validating OAuth2 access tokens issued by django-oauth-toolkit, for websockets and HTTP.

The toolkit deletes a revoked access token, so a revoked token and an unknown one look the
same from here: both are "unknown or revoked". Tokens are stored as the toolkit stores them
(hashed at rest: `COMPLIANT_BCP_RFC9700_TOKEN_STORAGE`), so they are looked up by checksum.
Never log the raw token.

A client-credentials token (a service application) has no user in the toolkit: it acts as
the user who owns its application (`Application.user`), with that user's roles and grants,
limited by the token's scopes (docs/decisions/0005-service-tokens-act-as-their-owner.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models.expressions import Col
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_application_model

from accounts.access_changes import batch_size


@dataclass(frozen=True)
class TokenInfo:
    user: AbstractBaseUser
    scopes: frozenset[str]
    expires: datetime
    token_id: int
    application_id: int | None = None


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
    found = _token_user_row(checksum)
    if found is not None:
        return found
    # No row: the token is unknown, revoked or bound to no user; the lookup below says which.
    model = get_access_token_model()
    token = (
        model.objects.select_related("user", "application__user")
        .filter(token_checksum=checksum)
        .first()
    )
    if token is None:
        raise TokenRejected("unknown or revoked token")
    user = token_user(token)
    if user is None:
        raise TokenRejected("token is not bound to a user")
    if not user.is_active:
        raise TokenRejected("user is inactive")
    if token.expires <= timezone.now():
        raise TokenRejected(f"token expired at {token.expires:%Y-%m-%dT%H:%MZ}")
    return TokenInfo(
        user=user,
        scopes=frozenset(token.scope.split()),
        expires=token.expires,
        token_id=token.pk,
        application_id=token.application_id,
    )


def _token_user_row(checksum: str) -> TokenInfo | None:
    """The token's user with the token's fields, in one query of plain SQL, or None when the
    token is unknown, revoked or bound to no user (`token_authenticate` then finds out which).

    Every Connect authenticates: composing the three-table `select_related` was most of the
    token check's cost (bench/RESULTS.md, the connect path's profile). The user is the token's,
    else its application's owner, as `token_user` has it; the checks are the same.
    """
    token_model = get_access_token_model()
    application_model = get_application_model()
    user_model = get_user_model()
    q = connection.ops.quote_name
    token_t = q(token_model._meta.db_table)
    application_t = q(application_model._meta.db_table)
    user_t = q(user_model._meta.db_table)
    owner = f"COALESCE({token_t}.{q('user_id')}, {application_t}.{q('user_id')})"
    # Only quoted names of the installed models' tables and columns go into the text.
    sql = (
        f"SELECT {user_t}.*, {token_t}.{q('id')} AS dg_token_id, "  # noqa: S608
        f"{token_t}.{q('expires')} AS dg_expires, {token_t}.{q('scope')} AS dg_scope, "
        f"{token_t}.{q('application_id')} AS dg_application_id FROM {token_t} "
        f"LEFT OUTER JOIN {application_t} "
        f"ON {application_t}.{q('id')} = {token_t}.{q('application_id')} "
        f"INNER JOIN {user_t} ON {user_t}.{q(user_model._meta.pk.column or 'id')} = {owner} "
        f"WHERE {token_t}.{q('token_checksum')} = %s"
    )
    rows = list(user_model.objects.raw(sql, [checksum]))
    if not rows:
        return None
    user: Any = rows[0]  # with the token's columns as dg_* attributes
    expires = _expires_value(token_model, user.dg_expires)
    if not user.is_active:
        raise TokenRejected("user is inactive")
    if expires <= timezone.now():
        raise TokenRejected(f"token expired at {expires:%Y-%m-%dT%H:%MZ}")
    return TokenInfo(
        user=user,
        scopes=frozenset(user.dg_scope.split()),
        expires=expires,
        token_id=user.dg_token_id,
        application_id=user.dg_application_id,
    )


def _expires_value(token_model: Any, value: Any) -> datetime:
    """The token's `expires` as the ORM would give it (SQLite returns text: its converters)."""
    field = token_model._meta.get_field("expires")
    expression = Col(token_model._meta.db_table, field)
    converters = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
    for converter in converters:
        value = converter(value, expression, connection)
    return cast(datetime, value)


def token_user(token: Any) -> Any:
    """Who a toolkit access token acts as: its user, else its application's owner."""
    if token.user is not None:
        return token.user
    if token.application is not None:
        return token.application.user
    return None


def token_still_valid(*, token_id: int) -> str | None:
    """Re-check a token a session authenticated with: None if still valid, else why not.

    A revoked token is gone from the table, a refreshed-away one too (the toolkit revokes it
    on refresh). The periodic sweep of live sessions checks all their tokens at once with
    `tokens_still_valid`.
    """
    model = get_access_token_model()
    token = model.objects.select_related("user", "application__user").filter(pk=token_id).first()
    if token is None:
        return "token revoked"
    user = token_user(token)
    if user is None or not user.is_active:
        return "user is inactive"
    if token.expires <= timezone.now():
        return f"token expired at {token.expires:%Y-%m-%dT%H:%MZ}"
    return None


def tokens_still_valid(*, token_ids: Iterable[int]) -> dict[int, str]:
    """`token_still_valid` for many tokens at once: {token id: why not} for the invalid ones.

    The periodic access sweep of live sessions (replication/services/sessions.py) calls it with
    the tokens of every session of a process: one query per `batch_size()` distinct tokens,
    not one per session. The reasons are the same as `token_still_valid`'s.
    """

    wanted = sorted(set(token_ids))
    model = get_access_token_model()
    size = batch_size()
    rows: dict[int, tuple[Any, ...]] = {}
    for start in range(0, len(wanted), size):
        found = model.objects.filter(pk__in=wanted[start : start + size]).values_list(
            "pk",
            "expires",
            "user_id",
            "user__is_active",
            "application__user_id",
            "application__user__is_active",
        )
        rows.update((row[0], row[1:]) for row in found)
    now = timezone.now()
    invalid: dict[int, str] = {}
    for token_id in wanted:
        row = rows.get(token_id)
        if row is None:
            invalid[token_id] = "token revoked"
            continue
        expires, user_id, user_active, owner_id, owner_active = row
        # As token_user: the token's user, else its application's owner.
        active = user_active if user_id is not None else owner_id is not None and owner_active
        if not active:
            invalid[token_id] = "user is inactive"
        elif expires <= now:
            invalid[token_id] = f"token expired at {expires:%Y-%m-%dT%H:%MZ}"
    return invalid
