"""Who is asking: the OAuth2 bearer token of a GraphQL request or websocket connection.

Over HTTP the token is the `Authorization: Bearer ...` header; over the websocket it is the
`connection_init` payload (`{"Authorization": "Bearer ..."}` or `{"token": "..."}`), because
browsers cannot set headers on a websocket. The token is checked by `accounts.tokens`, the same
door as the websocket replicas, the HTTP API and the CouchDB endpoints; each resolver then asks
for the scope it needs (`read`, `write`, `topics`) and passes the user to the services.

This is GraphQL's access module: the one module of `graphqlapi` that asks `accounts.access`
(the scope); the rest passes the acting user to the reads and services that decide (an
import-linter contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.access import access_scope
from accounts.tokens import TokenInfo, TokenRejected, token_authenticate
from core.errors import DataGateError, ErrorCode


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization` value, or None if there is none; DG-1001 if malformed."""
    if header is None or not header.strip():
        return None
    parts = header.split()
    if parts[0].lower() != "bearer":
        raise DataGateError(ErrorCode.TOKEN_INVALID, reason="use the Bearer scheme")
    if len(parts) != 2:
        raise DataGateError(ErrorCode.TOKEN_INVALID, reason="malformed Authorization header")
    return parts[1]


def token_from_params(params: Any) -> str | None:
    """The token of a websocket's `connection_init` payload."""
    if not isinstance(params, dict):
        return None
    for key in ("Authorization", "authorization"):
        if isinstance(params.get(key), str):
            return bearer_token(params[key])
    token = params.get("token")
    return token if isinstance(token, str) else None


def _authenticate(raw: str | None) -> TokenInfo:
    try:
        return token_authenticate(raw)
    except TokenRejected as rejected:
        raise DataGateError(ErrorCode.TOKEN_INVALID, reason=rejected.reason) from None


@dataclass
class GraphQLContext:
    """The context of one HTTP request or one websocket connection."""

    raw_token: str | None = None
    # Set by strawberry from a websocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    request: Any = None
    info: TokenInfo | None = None
    checked_at: float = field(default=0.0)

    async def authenticate(self) -> TokenInfo:
        """The token's owner and scopes, checked once (again every
        SESSION_RECHECK_INTERVAL seconds on a long-lived websocket: a revoked token or
        expired one ends its subscriptions)."""
        if self.raw_token is None and self.connection_params is not None:
            self.raw_token = token_from_params(self.connection_params)
        recheck = float(settings.DATAGATE["SESSION_RECHECK_INTERVAL"])
        now = time.monotonic()
        if self.info is None or now - self.checked_at >= recheck:
            self.info = await database_sync_to_async(_authenticate)(self.raw_token)
            self.checked_at = now
        return self.info

    async def user_with(self, scope: str) -> Any:
        """The acting user, if the token carries `scope` (DG-1001, DG-1002 otherwise)."""
        info = await self.authenticate()
        if not access_scope(scopes=info.scopes, scope=scope):
            raise DataGateError(ErrorCode.TOKEN_SCOPE, scope=scope)
        return info.user
