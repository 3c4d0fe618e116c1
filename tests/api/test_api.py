"""The HTTP API: every endpoint under each permission case, conditional writes, changes paging,
errors in one shape, rate limits, CORS and the schema/docs pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from accounts.access import System
from accounts.services import collection_perm_grant, key_rule_add, tenant_get_or_create
from replication.models import ErrorEvent, JournalEntry
from replication.selectors import changes_since, feed_from_changes
from replication.services.documents import document_put
from replication.services.engine import batch_apply, collection_get_or_create
from tests.support.fast_accounts import fast_cli_application, person

BASE = "/api/v1/tenants/acme/collections/notes"


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    cache.clear()


@pytest.fixture
def api(db: Any) -> Any:
    """api(token) -> an APIClient sending that bearer token (None: no token)."""

    def make(token: str | None = None) -> APIClient:
        client = APIClient()
        if token is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make


@pytest.fixture
def people(issue_token: Any, collection: Any) -> dict[str, str]:
    """Tokens for each permission case, over the `acme/notes` collection holding `seed`."""
    fast_cli_application()
    reader = person("rita", "acme", "reader")
    writer = person("wendy", "acme", "writer")
    outsider = person("olga", "other", "admin")
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="seed",
        body={"title": "seed"},
        origin="t",
    )
    return {
        "reader": issue_token(reader, "read write"),
        "writer": issue_token(writer, "read write"),
        "writer_read_only_scope": issue_token(writer, "read"),
        "writer_wrong_scope": issue_token(writer, "topics"),
        "outsider": issue_token(outsider, "read write"),
        "expired": issue_token(writer, "read write", expires_in=-10),
    }


def error_of(response: Any) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == response.status_code
    assert body["error"]["message"].startswith(body["error"]["code"] + " ")
    return response.status_code, body["error"]["code"]


READS = [
    "/api/v1/tenants/",
    "/api/v1/tenants/acme/collections/",
    f"{BASE}/",
    f"{BASE}/documents/",
    f"{BASE}/documents/seed",
    f"{BASE}/changes/",
]


@pytest.mark.parametrize("url", READS)
def test_reads_need_a_valid_token(api: Any, people: dict[str, str], url: str) -> None:
    assert error_of(api().get(url)) == (401, "DG-1001")
    assert error_of(api("not-a-token").get(url)) == (401, "DG-1001")
    assert error_of(api(people["expired"]).get(url)) == (401, "DG-1001")
    response = api().get(url)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("url", READS)
def test_reads_need_the_read_scope(api: Any, people: dict[str, str], url: str) -> None:
    assert error_of(api(people["writer_wrong_scope"]).get(url)) == (403, "DG-1002")


@pytest.mark.parametrize("url", READS)
def test_readers_and_writers_read_everything(api: Any, people: dict[str, str], url: str) -> None:
    for who in ("reader", "writer", "writer_read_only_scope"):
        assert api(people[who]).get(url).status_code == 200, who


@pytest.mark.parametrize("url", READS[1:])
def test_another_tenants_member_sees_nothing(api: Any, people: dict[str, str], url: str) -> None:
    status, code = error_of(api(people["outsider"]).get(url))
    # The tenant is "not found"; its collections look missing, as on the websocket.
    assert (status, code) == (404, "DG-8001" if url.endswith("/collections/") else "DG-3001")


def test_tenants_list_shows_only_the_callers_tenants_and_roles(
    api: Any, people: dict[str, str]
) -> None:
    assert api(people["reader"]).get("/api/v1/tenants/").json() == {
        "tenants": [{"slug": "acme", "name": "acme", "role": "reader"}]
    }
    slugs = [t["slug"] for t in api(people["outsider"]).get("/api/v1/tenants/").json()["tenants"]]
    assert slugs == ["other"]


def test_a_missing_collection_looks_like_an_unreadable_one(
    api: Any, people: dict[str, str]
) -> None:
    response = api(people["reader"]).get("/api/v1/tenants/acme/collections/nope/documents/")
    assert error_of(response) == (404, "DG-3001")


def test_collection_stats_report_markers_and_counts(
    api: Any, people: dict[str, str], collection: Any
) -> None:
    stats = api(people["reader"]).get(f"{BASE}/").json()
    assert stats["markers"] == {"collectionMarker": 1, "tombstoneMarker": collection.epoch}
    assert stats["documents"] == 1
    assert stats["tombstones"] == 0
    listed = api(people["reader"]).get("/api/v1/tenants/acme/collections/").json()
    assert listed["collections"] == [{"name": "notes", "markers": stats["markers"]}]


# --- writes -------------------------------------------------------------------------------


def put(client: APIClient, doc_id: str, body: Any, **headers: str) -> Any:
    return client.put(f"{BASE}/documents/{doc_id}", body, format="json", headers=headers)


def test_writes_need_a_token_and_the_write_scope(api: Any, people: dict[str, str]) -> None:
    assert error_of(put(api(), "a", {"x": 1})) == (401, "DG-1001")
    assert error_of(put(api(people["writer_read_only_scope"]), "a", {"x": 1})) == (
        403,
        "DG-1002",
    )
    assert error_of(api(people["writer_read_only_scope"]).delete(f"{BASE}/documents/seed")) == (
        403,
        "DG-1002",
    )


def test_a_reader_may_not_write_or_delete(api: Any, people: dict[str, str]) -> None:
    assert error_of(put(api(people["reader"]), "a", {"x": 1})) == (403, "DG-3002")
    assert error_of(api(people["reader"]).delete(f"{BASE}/documents/seed")) == (403, "DG-3002")


def test_another_tenants_member_may_not_write(api: Any, people: dict[str, str]) -> None:
    assert error_of(put(api(people["outsider"]), "a", {"x": 1})) == (404, "DG-3001")
    assert error_of(api(people["outsider"]).delete(f"{BASE}/documents/seed")) == (404, "DG-3001")


def test_a_writer_writes_through_the_service_with_a_seq_and_a_journal_entry(
    api: Any, people: dict[str, str], collection: Any
) -> None:
    response = put(api(people["writer"]), "a", {"title": "hello", "tags": ["x"]})
    assert response.status_code == 200
    doc = response.json()
    assert doc["_id"] == "a"
    assert doc["_revision"] == 1
    assert doc["title"] == "hello"
    assert doc["_origin"] == "api:wendy"
    assert response["ETag"] == '"1"'
    entry = JournalEntry.objects.get(collection=collection, doc_id="a")
    assert entry.seq == 2
    assert entry.operation == "put"
    assert entry.user is not None
    assert entry.user.username == "wendy"
    assert api(people["reader"]).get(f"{BASE}/documents/a").json() == doc


def test_a_writer_deletes_and_the_delete_becomes_a_tombstone(
    api: Any, people: dict[str, str], collection: Any
) -> None:
    assert api(people["writer"]).delete(f"{BASE}/documents/seed").status_code == 204
    assert error_of(api(people["reader"]).get(f"{BASE}/documents/seed")) == (404, "DG-8001")
    feed = feed_from_changes(changes_since(collection_id=collection.pk, after_seq=1, limit=10))
    assert list(feed["tombstoneMap"]) == ["seed"]
    # Deleting what is not there is not an error.
    assert api(people["writer"]).delete(f"{BASE}/documents/never").status_code == 204


def test_a_writer_creates_a_missing_collection_on_first_write(
    api: Any, people: dict[str, str]
) -> None:
    url = "/api/v1/tenants/acme/collections/fresh/documents/a"
    assert api(people["writer"]).put(url, {"x": 1}, format="json").status_code == 200
    assert error_of(
        api(people["reader"]).put(
            "/api/v1/tenants/acme/collections/other/documents/a", {"x": 1}, format="json"
        )
    ) == (404, "DG-3001")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([1, 2], "DG-8004"),
        ({"_id": "other"}, "DG-8004"),
        ({"_revision": "one"}, "DG-8004"),
        ({"_secret": 1}, "DG-4005"),
    ],
)
def test_a_bad_document_body_is_refused_with_its_code(
    api: Any, people: dict[str, str], body: Any, code: str
) -> None:
    assert error_of(put(api(people["writer"]), "a", body)) == (400, code)
    assert api(people["reader"]).get(f"{BASE}/documents/a").status_code == 404


def test_an_id_longer_than_128_characters_is_refused(api: Any, people: dict[str, str]) -> None:
    assert error_of(put(api(people["writer"]), "x" * 129, {"x": 1})) == (400, "DG-4002")


def test_malformed_json_and_other_media_types_are_refused(api: Any, people: dict[str, str]) -> None:
    client = api(people["writer"])
    url = f"{BASE}/documents/a"
    bad_json = client.put(url, data="{nope", content_type="application/json")
    assert error_of(bad_json) == (400, "DG-8004")
    as_text = client.put(url, data="x=1", content_type="text/plain")
    assert error_of(as_text) == (415, "DG-8005")


# --- conditional writes --------------------------------------------------------------------


def test_if_match_with_the_stored_revision_writes(api: Any, people: dict[str, str]) -> None:
    response = put(api(people["writer"]), "seed", {"title": "v2"}, **{"If-Match": '"1"'})
    assert response.status_code == 200
    assert response.json()["_revision"] == 2


@pytest.mark.storage
def test_if_match_with_another_revision_is_a_conflict_and_writes_nothing(
    api: Any, people: dict[str, str]
) -> None:
    response = put(api(people["writer"]), "seed", {"title": "lost"}, **{"If-Match": '"7"'})
    assert error_of(response) == (409, "DG-4009")
    assert "at revision 1, not the expected 7" in response.json()["error"]["message"]
    assert api(people["reader"]).get(f"{BASE}/documents/seed").json()["title"] == "seed"


@pytest.mark.storage
def test_revision_in_the_body_is_a_conditional_write_too(api: Any, people: dict[str, str]) -> None:
    client = api(people["writer"])
    assert put(client, "new", {"_revision": 0, "x": 1}).status_code == 200
    assert error_of(put(client, "new", {"_revision": 0, "x": 2})) == (409, "DG-4009")
    assert put(client, "new", {"_revision": 1, "x": 3}).json()["x"] == 3
    disagree = put(client, "new", {"_revision": 2, "x": 4}, **{"If-Match": '"1"'})
    assert error_of(disagree) == (400, "DG-8004")


def test_conditional_delete(api: Any, people: dict[str, str]) -> None:
    client = api(people["writer"])
    url = f"{BASE}/documents/seed"
    assert error_of(client.delete(url, headers={"If-Match": '"4"'})) == (409, "DG-4009")
    assert client.delete(url, headers={"If-Match": '"1"'}).status_code == 204


def test_an_if_match_that_is_not_a_revision_is_a_bad_parameter(
    api: Any, people: dict[str, str]
) -> None:
    assert error_of(put(api(people["writer"]), "seed", {}, **{"If-Match": "abc"})) == (
        400,
        "DG-8003",
    )


# --- documents list ------------------------------------------------------------------------


@pytest.mark.storage
def test_documents_page_by_id_and_filter_on_fields(
    api: Any, people: dict[str, str], collection: Any
) -> None:
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        origin="phone",
        feed={
            "changeSet": [
                {"_id": f"d{i}", "_revision": 1, "_modified": 1000 + i, "n": i, "odd": i % 2 == 1}
                | {"meta": {"kind": "even" if i % 2 == 0 else "odd"}}
                for i in range(5)
            ]
        },
    )
    client = api(people["reader"])
    first = client.get(f"{BASE}/documents/", {"limit": 2}).json()
    assert [d["_id"] for d in first["documents"]] == ["d0", "d1"]
    assert first["next"] == "d1"
    second = client.get(f"{BASE}/documents/", {"limit": 2, "after": "d1"}).json()
    assert [d["_id"] for d in second["documents"]] == ["d2", "d3"]
    odd = client.get(f"{BASE}/documents/", {"filter": "odd=true"}).json()
    assert [d["_id"] for d in odd["documents"]] == ["d1", "d3"]
    nested = client.get(f"{BASE}/documents/", {"filter": ["meta.kind=even", "n=4"]}).json()
    assert [d["_id"] for d in nested["documents"]] == ["d4"]
    as_string = client.get(f"{BASE}/documents/", {"filter": "title=seed"}).json()
    assert [d["_id"] for d in as_string["documents"]] == ["seed"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "many"},
        {"limit": "5000"},
        {"filter": "novalue"},
        {"filter": "a={}"},
    ],
)
def test_bad_paging_and_filter_parameters_are_refused(
    api: Any, people: dict[str, str], params: dict[str, str]
) -> None:
    assert error_of(api(people["reader"]).get(f"{BASE}/documents/", params)) == (400, "DG-8003")


# --- changes -------------------------------------------------------------------------------


@pytest.mark.storage
def test_changes_page_in_seq_order_with_the_websocket_markers(
    api: Any, people: dict[str, str], collection: Any
) -> None:
    client = api(people["writer"])
    for doc_id in ("a", "b", "c"):
        put(client, doc_id, {"v": doc_id})
    client.delete(f"{BASE}/documents/a")
    epoch = collection.epoch
    first = client.get(f"{BASE}/changes/", {"limit": 2}).json()
    assert first["startMarkers"] == {"collectionMarker": 0, "tombstoneMarker": epoch}
    assert [d["_id"] for d in first["feed"]["changeSet"]] == ["seed", "b"]
    assert first["hasMore"] is True
    assert first["reset"] is False
    assert first["endMarkers"] == {"collectionMarker": 3, "tombstoneMarker": epoch}
    assert first["next"].endswith(f"collectionMarker=3&tombstoneMarker={epoch}&limit=2")
    # The same page the websocket pull reads: changes_since and feed_from_changes.
    expected = feed_from_changes(changes_since(collection_id=collection.pk, after_seq=0, limit=2))
    assert first["feed"] == expected
    second = client.get(first["next"]).json()
    assert [d["_id"] for d in second["feed"]["changeSet"]] == ["c"]
    assert list(second["feed"]["tombstoneMap"]) == ["a"]
    assert second["hasMore"] is False
    assert second["next"] is None
    assert second["endMarkers"] == {"collectionMarker": 5, "tombstoneMarker": epoch}
    after = client.get(f"{BASE}/changes/", second["endMarkers"]).json()
    assert after["feed"] == {"changeSet": [], "tombstoneMap": {}}
    assert after["endMarkers"] == second["endMarkers"]


def test_changes_with_markers_of_another_timeline_start_a_snapshot(
    api: Any, people: dict[str, str], collection: Any
) -> None:
    client = api(people["writer"])
    for doc_id in ("a", "b"):
        put(client, doc_id, {"v": doc_id})
    stale = {"collectionMarker": 2, "tombstoneMarker": collection.epoch + 1, "limit": 2}
    first = client.get(f"{BASE}/changes/", stale).json()
    assert first["reset"] is True
    assert [d["_id"] for d in first["feed"]["changeSet"]] == ["seed", "a"]
    assert "snapshot=true" in first["next"]
    second = client.get(first["next"]).json()
    assert second["reset"] is False
    assert [d["_id"] for d in second["feed"]["changeSet"]] == ["b"]


@pytest.mark.parametrize(
    "params",
    [{"collectionMarker": "-1"}, {"tombstoneMarker": "x"}, {"limit": "0"}, {"snapshot": "maybe"}],
)
def test_bad_markers_are_refused(api: Any, people: dict[str, str], params: dict[str, str]) -> None:
    assert error_of(api(people["reader"]).get(f"{BASE}/changes/", params)) == (400, "DG-8003")


# --- errors, limits, CORS, schema ----------------------------------------------------------


def test_unknown_urls_and_methods_answer_in_the_error_shape(
    api: Any, people: dict[str, str]
) -> None:
    assert error_of(api(people["reader"]).get("/api/v1/nothing/here")) == (404, "DG-8001")
    assert error_of(api(people["reader"]).post(f"{BASE}/changes/")) == (405, "DG-8002")


def test_errors_are_recorded_as_error_events(api: Any, people: dict[str, str]) -> None:
    put(api(people["reader"]), "a", {"x": 1})
    event = ErrorEvent.objects.get(code="DG-3002")
    assert event.user is not None
    assert event.user.username == "rita"
    assert event.tenant == "acme"
    assert event.collection == "notes"
    assert event.context["http"] == f"PUT {BASE}/documents/a"


def test_requests_beyond_the_rate_limit_get_dg_5002(
    api: Any, people: dict[str, str], settings: Any
) -> None:
    settings.DATAGATE = dict(settings.DATAGATE, API_RATE_LIMIT="2/min")
    client = api(people["reader"])
    assert client.get(f"{BASE}/").status_code == 200
    assert client.get(f"{BASE}/").status_code == 200
    limited = client.get(f"{BASE}/")
    assert error_of(limited) == (429, "DG-5002")
    assert int(limited["Retry-After"]) > 0
    # The limit is per token: another token of another user is not limited.
    assert api(people["writer"]).get(f"{BASE}/").status_code == 200


def test_cors_allows_the_configured_origins_only(
    api: Any, people: dict[str, str], settings: Any
) -> None:
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, if-match, content-type",
    }
    allowed = api().options(f"{BASE}/documents/a", headers=preflight)
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "if-match" in allowed["Access-Control-Allow-Headers"]
    other = api().options(
        f"{BASE}/documents/a", headers=preflight | {"Origin": "https://evil.test"}
    )
    assert "Access-Control-Allow-Origin" not in other
    read = api(people["reader"]).get(
        f"{BASE}/documents/seed", headers={"Origin": preflight["Origin"]}
    )
    assert "etag" in read["Access-Control-Expose-Headers"].lower()


def test_the_schema_and_the_docs_are_served_without_a_token_or_a_cdn(api: Any) -> None:
    schema = api().get("/api/v1/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/tenants/{tenant}/collections/{collection}/changes/" in paths
    docs = api().get("/api/v1/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn" not in html.lower()
    # The assets are served by this server (whitenoise), not fetched from elsewhere.
    bundle = Client().get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert bundle.status_code == 200


def test_an_expired_token_says_so(api: Any, people: dict[str, str]) -> None:
    message = api(people["expired"]).get("/api/v1/tenants/").json()["error"]["message"]
    assert message.startswith("DG-1001 failed to validate token: token expired at")


def test_a_writer_token_is_not_leaked_in_error_events(api: Any, people: dict[str, str]) -> None:
    api("secret-token-value").get("/api/v1/tenants/")
    assert not ErrorEvent.objects.filter(text__contains="secret-token-value").exists()
    assert not ErrorEvent.objects.filter(context__icontains="secret-token-value").exists()


def test_collections_of_another_tenant_are_independent(api: Any, people: dict[str, str]) -> None:
    other = tenant_get_or_create(slug="other")
    collection_get_or_create(tenant=other, name="notes")
    listed = api(people["outsider"]).get("/api/v1/tenants/other/collections/").json()
    assert [c["name"] for c in listed["collections"]] == ["notes"]
    assert error_of(api(people["reader"]).get("/api/v1/tenants/other/collections/notes/")) == (
        404,
        "DG-3001",
    )
    assert error_of(api(people["reader"]).get("/api/v1/tenants/nowhere/collections/")) == (
        404,
        "DG-8001",
    )


# --- key rules and collection grants (accounts.access) ---------------------------------------


@pytest.fixture
def ruled(people: dict[str, str], collection: Any) -> dict[str, str]:
    """acme/notes with key rules: nobody but admins writes `locked/*`, deletes `keep-*` or
    reads `secret-*`; the rules apply to readers and writers alike."""
    acme = tenant_get_or_create(slug="acme")
    key_rule_add(
        tenant=acme, collection_name="notes", pattern="locked/*", effect="deny", actions=["write"]
    )
    key_rule_add(
        tenant=acme, collection_name="notes", pattern="keep-*", effect="deny", actions=["delete"]
    )
    key_rule_add(
        tenant=acme, collection_name="notes", pattern="secret-*", effect="deny", actions=["read"]
    )
    for doc_id in ("keep-1", "secret-1", "public-1"):
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id=doc_id,
            body={"title": doc_id},
            origin="t",
        )
    return people


def test_a_key_rule_denies_writing_matching_ids(api: Any, ruled: dict[str, str]) -> None:
    assert error_of(put(api(ruled["writer"]), "locked/a", {"x": 1})) == (403, "DG-3003")
    assert put(api(ruled["writer"]), "open/a", {"x": 1}).status_code == 200


def test_a_key_rule_denies_deleting_matching_ids(api: Any, ruled: dict[str, str]) -> None:
    client = api(ruled["writer"])
    assert error_of(client.delete(f"{BASE}/documents/keep-1")) == (403, "DG-3004")
    assert client.delete(f"{BASE}/documents/public-1").status_code == 204


@pytest.mark.storage
def test_a_key_rule_hides_documents_from_every_read(api: Any, ruled: dict[str, str]) -> None:
    client = api(ruled["reader"])
    assert error_of(client.get(f"{BASE}/documents/secret-1")) == (404, "DG-8001")
    listed = [d["_id"] for d in client.get(f"{BASE}/documents/").json()["documents"]]
    assert "secret-1" not in listed
    assert "public-1" in listed
    changes = client.get(f"{BASE}/changes/").json()
    assert "secret-1" not in [d["_id"] for d in changes["feed"]["changeSet"]]
    # The markers still cover the hidden change, so the client never waits for it.
    assert changes["endMarkers"]["collectionMarker"] == 4


def test_a_collection_grant_opens_one_collection_to_a_non_member(
    api: Any, people: dict[str, str], collection: Any, issue_token: Any
) -> None:
    guest = get_user_model().objects.create(username="gus")
    collection_perm_grant(
        tenant=tenant_get_or_create(slug="acme"), collection_name="notes", perm="read", user=guest
    )
    token = issue_token(guest, "read write")
    assert api(token).get(f"{BASE}/documents/seed").status_code == 200
    listed = api(token).get("/api/v1/tenants/acme/collections/").json()["collections"]
    assert [c["name"] for c in listed] == ["notes"]
    assert error_of(put(api(token), "a", {"x": 1})) == (403, "DG-3002")
