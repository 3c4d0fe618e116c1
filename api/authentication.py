"""Bearer-token authentication for the HTTP API, on the same validation as the websocket.

`Authorization: Bearer <token>` with an access token issued by django-oauth-toolkit (the
`/o/token/` endpoint, or `manage.py datagate_token`). `request.auth` is the `TokenInfo`
(user, scopes, expiry, token id); the throttle keys on its token id. The token is never logged.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.tokens import TokenInfo, TokenRejected, token_authenticate


class BearerTokenAuthentication(BaseAuthentication):
    keyword = "bearer"

    def authenticate(self, request: Request) -> tuple[Any, TokenInfo] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword.encode():
            raise exceptions.AuthenticationFailed("use the Bearer scheme")
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("malformed Authorization header")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("malformed token") from None
        try:
            info = token_authenticate(raw)
        except TokenRejected as rejected:
            raise exceptions.AuthenticationFailed(rejected.reason) from None
        return info.user, info

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="datagate"'
