"""`datagate-replica publish` and `subscribe` against a real daphne."""

from __future__ import annotations

import json
from typing import Any

import pytest
from datagate_replica.cli import main
from datagate_replica.cli_topics import parse_start

from topics.services import topic_create

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def base(daphne: Any, member: Any, issue_token: Any, tenant: Any) -> list[str]:
    alice = member("alice", "writer")
    topic_create(tenant=tenant, name="news", scope="global", owner_id=alice.pk)
    token = issue_token(alice, "topics")
    return ["--url", daphne.ws_url, "--tenant", "acme", "--token", token]


def test_publish_prints_offsets_and_subscribe_prints_and_commits(
    base: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([*base, "publish", "news", '{"title": "hi"}', '"plain"', "--id", "a", "--id", "b"])
        == 0
    )
    assert capsys.readouterr().out.split() == ["1", "2"]
    assert main([*base, "publish", "news", '"again"', "--id", "b"]) == 0  # a retry: no duplicate
    assert capsys.readouterr().out.split() == ["2"]

    sub = [*base, "subscribe", "--device", "cli", "news"]
    assert main([*sub, "--from", "beginning", "--count", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(m["offset"], m["payload"]) for m in lines] == [(1, {"title": "hi"}), (2, "plain")]

    assert main([*base, "publish", "news", '"third"']) == 0
    capsys.readouterr()
    assert main([*sub, "--count", "1"]) == 0  # from committed: only what is new to this device
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["offset"] == 3


def test_a_range_subscription_stops_at_its_end(
    base: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*base, "publish", "--create", "global", "news", "1", "2", "3", "4"]) == 0
    capsys.readouterr()
    assert main([*base, "subscribe", "news", "--from", "2:3", "--no-commit"]) == 0
    offsets = [json.loads(line)["offset"] for line in capsys.readouterr().out.splitlines()]
    assert offsets == [2, 3]


def test_refusals_and_bad_usage_have_their_exit_status(
    base: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad_token = [*base[:-1], "not-a-token"]
    assert main([*bad_token, "publish", "news", "1"]) == 1
    assert "DG-1001" in capsys.readouterr().err
    assert main([*base, "publish", "nowhere", "1"]) == 1
    assert "DG-6002" in capsys.readouterr().err
    assert main([*base, "publish", "news", "{not json"]) == 2
    assert main([*base, "subscribe", "news", "--from", "yesterday"]) == 2


def test_start_positions_parse() -> None:
    assert parse_start("latest") == "latest"
    assert parse_start("5") == (5, None)
    assert parse_start("5:9") == (5, 9)
