"""Operator commands: first-start bootstrap and access tokens."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from accounts.tokens import TokenRejected, token_authenticate

pytestmark = pytest.mark.django_db


def test_bootstrap_creates_an_admin_once_and_prints_where_to_log_in() -> None:
    out = StringIO()
    call_command("datagate_bootstrap", "--port", "8123", stdout=out)
    text = out.getvalue()
    assert "http://127.0.0.1:8123/console/" in text
    assert "password" in text
    again = StringIO()
    call_command("datagate_bootstrap", stdout=again)
    assert "existing admin" in again.getvalue()


def test_datagate_token_prints_a_token_that_authenticates_with_its_scopes(make_user: Any) -> None:
    user = make_user("bob")
    out = StringIO()
    call_command("datagate_token", "bob", "--scope", "read topics", stdout=out)
    info = token_authenticate(out.getvalue().strip())
    assert info.user == user
    assert info.scopes == {"read", "topics"}


def test_datagate_token_refuses_unknown_users_and_scopes(make_user: Any) -> None:
    make_user("bob")
    with pytest.raises(CommandError, match="no user"):
        call_command("datagate_token", "nobody")
    with pytest.raises(CommandError, match="unknown scope"):
        call_command("datagate_token", "bob", "--scope", "read admin")


def test_expired_and_unknown_tokens_are_rejected(make_user: Any) -> None:
    make_user("bob")
    out = StringIO()
    call_command("datagate_token", "bob", "--expires-in", "-5", stdout=out)
    with pytest.raises(TokenRejected, match="expired"):
        token_authenticate(out.getvalue().strip())
    with pytest.raises(TokenRejected, match="unknown or revoked"):
        token_authenticate("nope")
    with pytest.raises(TokenRejected, match="no token"):
        token_authenticate(None)
