"""Topics over HTTP: list, publish, read a range, commit — with the topics websocket's rules."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.services import tenant_get_or_create
from tests.support.fast_accounts import fast_cli_application, person
from topics.models import Message
from topics.services import topic_create

TOPICS = "/api/v1/tenants/acme/topics/"
NEWS = "/api/v1/tenants/acme/topics/news/"


@pytest.fixture
def clients(db: Any, issue_token: Any) -> dict[str, APIClient]:
    cache.clear()
    fast_cli_application()
    writer = person("wendy", "acme", "writer")
    reader = person("rita", "acme", "reader")
    outsider = person("olga", "other", "admin")
    topic_create(
        tenant=tenant_get_or_create(slug="acme"), name="news", scope="global", owner_id=None
    )
    topic_create(
        tenant=tenant_get_or_create(slug="acme"), name="diary", scope="local", owner_id=writer.pk
    )
    made: dict[str, APIClient] = {"anonymous": APIClient()}
    for name, user, scopes in [
        ("writer", writer, "topics"),
        ("reader", reader, "topics"),
        ("outsider", outsider, "topics"),
        ("wrong_scope", writer, "read write"),
    ]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(user, scopes)}")
        made[name] = client
    return made


def code(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def publish(client: APIClient, *ids: str, device: str = "http", topic: str = "news") -> Any:
    body = {"messages": [{"messageId": i, "payload": {"n": i}} for i in ids], "device": device}
    return client.post(f"/api/v1/tenants/acme/topics/{topic}/messages/", body, format="json")


def test_topics_need_a_token_with_the_topics_scope(clients: dict[str, APIClient]) -> None:
    assert code(clients["anonymous"].get(TOPICS)) == (401, "DG-1001")
    assert code(clients["wrong_scope"].get(TOPICS)) == (403, "DG-1002")
    assert code(publish(clients["wrong_scope"], "m1")) == (403, "DG-1002")
    assert code(clients["outsider"].get(TOPICS)) == (404, "DG-6001")


def test_the_list_shows_global_topics_and_the_callers_local_ones(
    clients: dict[str, APIClient],
) -> None:
    mine = [t["name"] for t in clients["writer"].get(TOPICS).json()["topics"]]
    theirs = [t["name"] for t in clients["reader"].get(TOPICS).json()["topics"]]
    assert sorted(mine) == ["diary", "news"]
    assert theirs == ["news"]


def test_publish_is_idempotent_per_message_id(clients: dict[str, APIClient]) -> None:
    assert publish(clients["writer"], "m1", "m2").json() == {"offsets": [1, 2]}
    assert publish(clients["writer"], "m2", "m3").json() == {"offsets": [2, 3]}
    assert Message.objects.count() == 3


def test_readers_may_not_publish_and_others_local_topics_do_not_exist(
    clients: dict[str, APIClient],
) -> None:
    assert code(publish(clients["reader"], "m1")) == (403, "DG-6006")
    assert code(publish(clients["reader"], "m1", topic="diary")) == (404, "DG-6002")
    assert code(publish(clients["outsider"], "m1")) == (404, "DG-6001")


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"payload": 1}]},
        {"messages": "x"},
        [1],
        {"messages": [{"messageId": ""}]},
    ],
)
def test_a_malformed_publish_is_refused_and_stores_nothing(
    clients: dict[str, APIClient], body: Any
) -> None:
    response = clients["writer"].post(f"{NEWS}messages/", body, format="json")
    assert code(response) == (400, "DG-8004")
    assert not Message.objects.exists()


def test_read_a_range_page_by_page(clients: dict[str, APIClient]) -> None:
    publish(clients["writer"], *[f"m{i}" for i in range(1, 6)])
    reader = clients["reader"]
    first = reader.get(f"{NEWS}messages/", {"start": "2", "limit": "2"}).json()
    assert [m["offset"] for m in first["messages"]] == [2, 3]
    assert first["messages"][0]["payload"] == {"n": "m2"}
    assert first["lastOffset"] == 5
    assert first["next"] == 4
    bounded = reader.get(f"{NEWS}messages/", {"start": "4", "end": "4"}).json()
    assert [m["offset"] for m in bounded["messages"]] == [4]
    assert bounded["next"] is None
    assert code(reader.get(f"{NEWS}messages/", {"start": "0"})) == (400, "DG-8003")
    assert code(reader.get("/api/v1/tenants/acme/topics/diary/messages/")) == (404, "DG-6002")


def test_commit_moves_forward_per_device_and_never_back(clients: dict[str, APIClient]) -> None:
    publish(clients["writer"], "m1", "m2", "m3")
    reader = clients["reader"]
    url = f"{NEWS}commit/"
    assert reader.post(url, {"offset": 2, "device": "phone"}, format="json").json() == {
        "committed": 2
    }
    assert code(reader.post(url, {"offset": 1, "device": "phone"}, format="json")) == (
        409,
        "DG-6007",
    )
    assert code(reader.post(url, {"offset": 9, "device": "phone"}, format="json")) == (
        409,
        "DG-6008",
    )
    assert reader.post(url, {"offset": 1, "device": "laptop"}, format="json").status_code == 200
    page = reader.get(f"{NEWS}messages/", {"device": "phone"}).json()
    assert page["committed"] == 2
    assert code(reader.post(url, {"offset": -1}, format="json")) == (400, "DG-8004")
