"""Where the external services (PostgreSQL, Redis) are, and the rule for when a service or tool
a test needs is missing (`unavailable`).

In CI (`CI=true`) a missing service is a failure; elsewhere the tests that need it skip with a
clear reason.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn
from urllib.parse import urlparse

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


def unavailable(message: str) -> NoReturn:
    """A service or tool a test needs is missing: a failure in CI (`CI=true`), where nothing may
    be skipped for want of it, and a skip with the reason elsewhere."""
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def require_service(name: str, url: str, default_port: int) -> str:
    """Return the URL, or fail (CI) / skip (elsewhere) when the service is not reachable."""
    if reachable(url, default_port):
        return url
    unavailable(f"{name} is not reachable at {url}")


def require_postgres() -> str:
    return require_service("PostgreSQL", TEST_DATABASE_URL, 5432)


def require_redis() -> str:
    return require_service("Redis", TEST_REDIS_URL, 6379)


CHROMIUM = os.environ.get("DATAGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> str:
    """Debian's Chromium for browser tests (`make test` installs it when run as root)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"Chromium is not installed at {CHROMIUM} (make chromium installs it as root)"
    unavailable(message)
