"""Rate limits per access token (DATAGATE `API_RATE_LIMIT`), answered with DG-5002.

Counts live in Django's cache: per process with the default local-memory cache, shared when the
deployment configures a shared cache.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from accounts.tokens import TokenInfo


class TokenRateThrottle(SimpleRateThrottle):
    scope = "token"

    def get_rate(self) -> str:
        # Read at request time, so the knob (and tests' settings overrides) apply.
        return str(settings.DATAGATE["API_RATE_LIMIT"])

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        if rate is None:
            return None, None
        count, _, period = rate.partition("/")
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]
        return int(count), seconds

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        info = request.auth
        if isinstance(info, TokenInfo):
            ident = f"token-{info.token_id}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
