"""Scope checks: which OAuth2 scope each HTTP method of a view needs.

A view names its scopes in `read_scope` (GET, HEAD, OPTIONS) and `write_scope` (the rest);
the defaults are `read` and `write`, and the topics views use `topics` for both.

This is the HTTP API's access module: the one module of `api` that asks `accounts.access` (an
import-linter contract in pyproject.toml keeps it so). Tenant, collection and document rights
are decided for the acting user by the reads and services the views call
(`replication.selectors`, `replication.services.documents`, `replication.data_views`,
`topics.requests`), the same functions GraphQL calls.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from accounts.access import access_scope
from accounts.tokens import TokenInfo
from core.errors import DataGateError, ErrorCode


def required_scope(request: Request, view: Any) -> str:
    if request.method in SAFE_METHODS:
        return str(getattr(view, "read_scope", "read"))
    return str(getattr(view, "write_scope", "write"))


class TokenHasScope(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        info = request.auth
        if not isinstance(info, TokenInfo):
            raise DataGateError(ErrorCode.TOKEN_INVALID, reason="no token given")
        scope = required_scope(request, view)
        if not access_scope(scopes=info.scopes, scope=scope):
            raise DataGateError(ErrorCode.TOKEN_SCOPE, scope=scope)
        return True
