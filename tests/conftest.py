from __future__ import annotations

import os
from typing import Any

import pytest

from tests.support.external_services import IN_CI, reachable

BACKEND = os.environ.get("DATAGATE_TEST_BACKEND", "sqlite")


def pytest_report_header(config: pytest.Config) -> str:
    return f"datagate: database backend {BACKEND}, CI={IN_CI}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND != "postgres":
        return
    url = os.environ.get("DATABASE_URL", "")
    if reachable(url, 5432):
        return
    if IN_CI:
        raise pytest.UsageError(f"PostgreSQL is not reachable at {url}; CI=true requires it")
    skip = pytest.mark.skip(reason=f"PostgreSQL is not reachable at {url} (required only in CI)")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def make_user(db: Any) -> Any:
    from django.contrib.auth import get_user_model

    def make(username: str = "alice", **extra: Any) -> Any:
        return get_user_model().objects.create_user(
            username=username, password="pw-" + username, **extra
        )

    return make


@pytest.fixture
def tenant(db: Any) -> Any:
    from accounts.services import tenant_get_or_create

    return tenant_get_or_create(slug="acme")


@pytest.fixture
def collection(tenant: Any) -> Any:
    from replication.services.engine import collection_get_or_create

    return collection_get_or_create(tenant=tenant, name="notes")[0]


@pytest.fixture
def member(make_user: Any, tenant: Any) -> Any:
    """Make a user with a role in the `acme` tenant."""
    from accounts.services import membership_set

    def make(username: str, role: str) -> Any:
        user = make_user(username)
        membership_set(user=user, tenant=tenant, role=role)
        return user

    return make


@pytest.fixture
def daphne(transactional_db: Any, tmp_path: Any) -> Any:
    """A real daphne process on the test database (in-memory channel layer). Stopped after."""
    from tests.support.server_processes import DaphneServer

    server = DaphneServer.start(tmp_path=tmp_path)
    yield server
    server.stop()


@pytest.fixture
def issue_token(db: Any) -> Any:
    """Issue an access token: issue_token(user, "read write") -> raw token."""
    from accounts.services import access_token_issue

    def issue(user: Any, scopes: str = "read write", expires_in: int | None = None) -> str:
        return access_token_issue(user=user, scopes=scopes.split(), expires_in=expires_in)

    return issue
