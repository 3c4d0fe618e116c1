"""OAuth2 through django-oauth-toolkit: PKCE and client-credentials flows, refresh, revocation.

Every flow goes through the toolkit's own endpoints under `/o/`, and the tokens they issue
are checked with `accounts.tokens.token_authenticate`, which the sync, topics and HTTP paths use.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import get_access_token_model, get_refresh_token_model

from accounts.services import application_create, token_pair_issue, token_refresh, token_revoke
from accounts.tokens import TokenRejected, token_authenticate, token_still_valid

pytestmark = pytest.mark.django_db

REDIRECT = "http://127.0.0.1:9/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


def pkce_tokens(client: Client, *, client_id: str, scope: str) -> dict[str, Any]:
    """Run the authorization code flow with PKCE as a logged-in user; return the token JSON."""
    verifier, challenge = pkce_pair()
    response = client.post(
        "/o/authorize/",
        {
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "response_type": "code",
            "scope": scope,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "allow": "Authorize",
        },
    )
    assert response.status_code == 302, response.content
    query = parse_qs(urlparse(response["Location"]).query)
    assert query["state"] == ["s1"]
    response = client.post(
        "/o/token/",
        {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 200, response.content
    return dict(response.json())


@pytest.fixture
def alice(make_user: Any) -> Any:
    return make_user("alice")


@pytest.fixture
def client_app(alice: Any) -> Any:
    return application_create(name="notes-app", owner=alice, kind="client", redirect_uris=REDIRECT)


def test_pkce_flow_issues_tokens_the_sync_server_accepts_with_their_scopes(
    client: Client, alice: Any, client_app: Any
) -> None:
    client.force_login(alice)
    tokens = pkce_tokens(client, client_id=client_app.client_id, scope="read write")
    info = token_authenticate(tokens["access_token"])
    assert info.user == alice
    assert info.scopes == {"read", "write"}
    assert info.application_id == client_app.application.pk
    assert tokens["refresh_token"]
    assert 0 < tokens["expires_in"] <= 3600


def test_pkce_is_required_and_only_s256(client: Client, alice: Any, client_app: Any) -> None:
    client.force_login(alice)
    base = {
        "client_id": client_app.client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "read",
        "allow": "Authorize",
    }
    for extra in ({}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}):
        response = client.post("/o/authorize/", {**base, **extra})
        location = response.get("Location", "")
        assert "code=" not in location


def test_a_refreshed_away_token_is_refused_and_the_new_one_accepted(
    client: Client, alice: Any, client_app: Any
) -> None:
    client.force_login(alice)
    first = pkce_tokens(client, client_id=client_app.client_id, scope="read")
    old_id = token_authenticate(first["access_token"]).token_id
    response = client.post(
        "/o/token/",
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client_app.client_id,
        },
    )
    assert response.status_code == 200, response.content
    second = response.json()
    with pytest.raises(TokenRejected, match="unknown or revoked"):
        token_authenticate(first["access_token"])
    assert token_still_valid(token_id=old_id) == "token revoked"
    assert token_authenticate(second["access_token"]).scopes == {"read"}
    # The old refresh token was rotated away and cannot be used again.
    again = client.post(
        "/o/token/",
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client_app.client_id,
        },
    )
    assert again.status_code == 400


def test_an_aged_refresh_token_is_refused(client: Client, alice: Any, client_app: Any) -> None:
    client.force_login(alice)
    tokens = pkce_tokens(client, client_id=client_app.client_id, scope="read")
    # The toolkit ages a refresh token from its access token's expiry (REFRESH_TOKEN_TTL).
    get_access_token_model().objects.update(expires=timezone.now() - timedelta(days=31))
    response = client.post(
        "/o/token/",
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client_app.client_id,
        },
    )
    assert response.status_code == 400


def test_a_revoked_token_is_refused(client: Client, alice: Any, client_app: Any) -> None:
    client.force_login(alice)
    tokens = pkce_tokens(client, client_id=client_app.client_id, scope="read write")
    token_id = token_authenticate(tokens["access_token"]).token_id
    response = client.post(
        "/o/revoke_token/", {"token": tokens["access_token"], "client_id": client_app.client_id}
    )
    assert response.status_code == 200
    with pytest.raises(TokenRejected, match="unknown or revoked"):
        token_authenticate(tokens["access_token"])
    assert token_still_valid(token_id=token_id) == "token revoked"


def test_client_credentials_tokens_act_as_the_applications_owner(
    client: Client, make_user: Any
) -> None:
    owner = make_user("indexer")
    service = application_create(name="indexer", owner=owner, kind="service")
    assert service.client_secret
    basic = base64.b64encode(f"{service.client_id}:{service.client_secret}".encode()).decode()
    response = client.post(
        "/o/token/",
        {"grant_type": "client_credentials", "scope": "read topics"},
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert response.status_code == 200, response.content
    raw = response.json()["access_token"]
    info = token_authenticate(raw)
    assert info.user == owner
    assert info.scopes == {"read", "topics"}
    # A wrong secret gets nothing.
    wrong = base64.b64encode(f"{service.client_id}:nope".encode()).decode()
    refused = client.post(
        "/o/token/", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=f"Basic {wrong}"
    )
    assert refused.status_code == 401
    # The owner deactivated: the service's tokens stop working.
    owner.is_active = False
    owner.save()
    with pytest.raises(TokenRejected, match="inactive"):
        token_authenticate(raw)


def test_tokens_are_stored_as_checksums_only(alice: Any) -> None:
    issued = token_pair_issue(user=alice, scopes=["read"], with_refresh=True)
    assert issued.refresh_token
    stored = get_access_token_model().objects.get()
    assert stored.token == ""
    assert stored.token_checksum == hashlib.sha256(issued.access_token.encode()).hexdigest()
    assert get_refresh_token_model().objects.get().token == ""


def test_expired_tokens_are_refused_at_connect_and_at_recheck(alice: Any) -> None:
    issued = token_pair_issue(user=alice, scopes=["read"])
    token_id = token_authenticate(issued.access_token).token_id
    assert token_still_valid(token_id=token_id) is None
    get_access_token_model().objects.update(expires=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TokenRejected, match="expired"):
        token_authenticate(issued.access_token)
    assert "expired" in (token_still_valid(token_id=token_id) or "")
    alice.is_active = False
    alice.save()
    assert token_still_valid(token_id=token_id) == "user is inactive"


def test_cli_refresh_rotates_and_revoke_works_on_both_kinds(alice: Any) -> None:
    first = token_pair_issue(user=alice, scopes=["read", "write"], with_refresh=True)
    assert first.refresh_token is not None
    second = token_refresh(raw_refresh_token=first.refresh_token)
    with pytest.raises(TokenRejected):
        token_authenticate(first.access_token)
    assert token_authenticate(second.access_token).scopes == {"read", "write"}
    with pytest.raises(LookupError):
        token_refresh(raw_refresh_token=first.refresh_token)
    assert second.refresh_token is not None
    assert token_revoke(raw_token=second.refresh_token) == "refresh"
    with pytest.raises(TokenRejected):
        token_authenticate(second.access_token)
    third = token_pair_issue(user=alice, scopes=["read"])
    assert token_revoke(raw_token=third.access_token) == "access"
    with pytest.raises(LookupError):
        token_revoke(raw_token=third.access_token)


def test_application_kinds_are_checked(alice: Any) -> None:
    with pytest.raises(ValueError, match="redirect URI"):
        application_create(name="x", owner=alice, kind="client")
    with pytest.raises(ValueError, match="unknown application kind"):
        application_create(name="x", owner=alice, kind="robot")


def test_no_token_or_password_reaches_any_log_record(
    client: Client, alice: Any, client_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Drive failed and successful authentications at DEBUG level; no secret is in any log."""
    caplog.set_level(logging.DEBUG)
    secrets_seen: list[str] = ["pw-alice"]
    # Failed: a password login, unknown tokens, a bad code, an unknown revocation.
    client.post("/admin/login/", {"username": "alice", "password": "wrong-password-123"})
    secrets_seen.append("wrong-password-123")
    bogus = secrets.token_urlsafe(32)
    secrets_seen.append(bogus)
    with pytest.raises(TokenRejected):
        token_authenticate(bogus)
    client.post("/o/token/", {"grant_type": "refresh_token", "refresh_token": bogus})
    client.post("/o/revoke_token/", {"token": bogus, "client_id": client_app.client_id})
    # Successful: a PKCE flow, a refresh, a client-credentials grant, a revocation.
    client.force_login(alice)
    tokens = pkce_tokens(client, client_id=client_app.client_id, scope="read")
    secrets_seen += [tokens["access_token"], tokens["refresh_token"]]
    token_authenticate(tokens["access_token"])
    refreshed = client.post(
        "/o/token/",
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client_app.client_id,
        },
    ).json()
    secrets_seen += [refreshed["access_token"], refreshed["refresh_token"]]
    client.post(
        "/o/revoke_token/", {"token": refreshed["access_token"], "client_id": client_app.client_id}
    )
    service = application_create(name="svc", owner=alice, kind="service")
    assert service.client_secret
    secrets_seen.append(service.client_secret)
    basic = base64.b64encode(f"{service.client_id}:{service.client_secret}".encode()).decode()
    issued = client.post(
        "/o/token/", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=f"Basic {basic}"
    ).json()
    secrets_seen.append(issued["access_token"])
    with pytest.raises(TokenRejected):
        token_authenticate(issued["access_token"] + "x")

    assert caplog.records, "DEBUG logging captured nothing: the test would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + repr(getattr(record, "request", ""))
        for secret in secrets_seen:
            assert secret not in text, f"a secret reached the log via {record.name}"
