"""Full-text search: ranking, highlights, and an index that moves with every write and delete
(SQLite FTS5 here, PostgreSQL full-text search in the `storage` pass)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.access import System
from core.errors import DataGateError
from replication.services.documents import document_delete, document_put
from replication.services.engine import batch_apply, now_ms
from search.models import SearchEntry
from search.selectors import search_documents
from search.services import (
    fields_validate,
    indexed_text,
    search_index_configure,
    search_index_remove,
)
from tests.support.fast_accounts import fast_cli_application, person

pytestmark = pytest.mark.storage

SEARCH = "/api/v1/tenants/acme/collections/notes/search/"


def write(collection: Any, doc_id: str, **body: Any) -> None:
    document_put(
        actor=System("test"), collection_id=collection.pk, doc_id=doc_id, body=body, origin="test"
    )


def found(collection: Any, query: str, **kwargs: Any) -> list[str]:
    return [h.doc_id for h in search_documents(collection_id=collection.pk, query=query, **kwargs)]


@pytest.fixture
def indexed(collection: Any) -> Any:
    """`acme/notes` indexing title and body, with three notes about foxes and dogs."""
    write(collection, "once", title="A fox", body="a note about nothing much", tag="x")
    write(collection, "often", title="Fox news", body="the fox and the foxes jump over a fox")
    write(collection, "dogs", title="Dogs", body="lazy dogs sleep all day")
    search_index_configure(collection_id=collection.pk, fields=["title", "body"])
    return collection


def test_configuring_fields_indexes_what_is_already_stored(indexed: Any) -> None:
    assert SearchEntry.objects.filter(collection=indexed).count() == 3
    assert set(found(indexed, "dogs")) == {"dogs"}


def test_more_matches_rank_higher(indexed: Any) -> None:
    assert found(indexed, "fox") == ["often", "once"]
    hits = search_documents(collection_id=indexed.pk, query="fox")
    assert hits[0].score > hits[1].score


def test_every_word_must_match_and_words_are_stemmed(indexed: Any) -> None:
    assert found(indexed, "fox jump") == ["often"]
    assert found(indexed, "jumping") == ["often"]
    assert found(indexed, "FOXES") == ["often", "once"]
    assert found(indexed, "unicorn") == []


def test_hits_carry_a_highlight_and_the_wire_document(indexed: Any) -> None:
    hit = search_documents(collection_id=indexed.pk, query="lazy")[0]
    assert "<mark>lazy</mark>" in hit.highlight.lower()
    assert hit.document["_id"] == "dogs"
    assert hit.document["title"] == "Dogs"
    assert hit.document["_revision"] == 1


def test_only_chosen_fields_are_indexed(indexed: Any) -> None:
    assert found(indexed, "x") == []


def test_a_deleted_document_disappears_from_results(indexed: Any) -> None:
    document_delete(actor=System("test"), collection_id=indexed.pk, doc_id="often", origin="test")
    assert found(indexed, "fox") == ["once"]
    assert not SearchEntry.objects.filter(collection=indexed, doc_id="often").exists()


def test_an_update_changes_what_matches(indexed: Any) -> None:
    write(indexed, "dogs", title="Cats", body="cats ignore everyone")
    assert found(indexed, "dogs") == []
    assert found(indexed, "cats") == ["dogs"]
    write(indexed, "dogs", title="", body="")
    assert found(indexed, "cats") == []


def test_replicated_changes_are_indexed_like_any_other(indexed: Any) -> None:
    batch_apply(
        actor=System("test"),
        collection_id=indexed.pk,
        origin="phone-1",
        feed={
            "changeSet": [
                {"_id": "pushed", "_revision": 1, "_modified": 1_000, "title": "zebra crossing"}
            ],
            "tombstoneMap": {"once": now_ms() + 1_000},
        },
    )
    assert found(indexed, "zebra") == ["pushed"]
    assert found(indexed, "fox") == ["often"]


def test_one_pushed_chunk_adds_updates_revives_empties_and_deletes_entries(
    indexed: Any,
) -> None:
    document_delete(actor=System("test"), collection_id=indexed.pk, doc_id="once", origin="test")
    stamp = now_ms()
    batch_apply(
        actor=System("test"),
        collection_id=indexed.pk,
        origin="phone-1",
        feed={
            "changeSet": [
                {"_id": "new", "_revision": 1, "_modified": stamp, "title": "zebra"},
                {"_id": "dogs", "_revision": 2, "_modified": stamp, "title": "parrots"},
                {"_id": "once", "_revision": 3, "_modified": stamp, "body": "revived owl"},
                {"_id": "often", "_revision": 2, "_modified": stamp, "tag": "no indexed field"},
            ],
        },
    )
    entries = dict(SearchEntry.objects.filter(collection=indexed).values_list("doc_id", "text"))
    assert entries == {"new": "zebra", "dogs": "parrots", "once": "revived owl"}
    batch_apply(
        actor=System("test"),
        collection_id=indexed.pk,
        origin="phone-1",
        feed={"tombstoneMap": {"new": stamp + 1, "dogs": stamp + 1, "never-stored": stamp}},
    )
    entries = dict(SearchEntry.objects.filter(collection=indexed).values_list("doc_id", "text"))
    assert entries == {"once": "revived owl"}
    assert found(indexed, "owl") == ["once"]


def test_a_late_older_write_does_not_change_the_index(indexed: Any) -> None:
    batch_apply(
        actor=System("test"),
        collection_id=indexed.pk,
        origin="old-phone",
        feed={"changeSet": [{"_id": "dogs", "_revision": 1, "_modified": 1, "title": "parrots"}]},
    )
    assert found(indexed, "parrots") == []
    assert found(indexed, "lazy") == ["dogs"]


def test_changing_the_fields_rebuilds_the_index(indexed: Any) -> None:
    search_index_configure(collection_id=indexed.pk, fields=["tag"])
    assert found(indexed, "fox") == []
    assert found(indexed, "x") == ["once"]
    search_index_remove(collection_id=indexed.pk)
    assert not SearchEntry.objects.filter(collection=indexed).exists()
    with pytest.raises(DataGateError) as raised:
        found(indexed, "x")
    assert raised.value.code == "DG-8007"


def test_a_read_filter_hides_documents_the_reader_may_not_see(indexed: Any) -> None:
    assert found(indexed, "fox", read_filter=lambda doc_id: doc_id != "often") == ["once"]


def test_paging_through_results(indexed: Any) -> None:
    assert found(indexed, "fox", limit=1) == ["often"]
    assert found(indexed, "fox", limit=1, offset=1) == ["once"]


def test_query_syntax_is_never_interpreted(indexed: Any) -> None:
    # FTS5 operators and quotes in a query are just words (or nothing) to DataGate.
    assert found(indexed, 'fox" OR "dogs') == []
    assert found(indexed, "NEAR(fox dogs)") == []
    assert found(indexed, "fox*") == ["often", "once"]
    with pytest.raises(DataGateError) as raised:
        found(indexed, '"" ***')
    assert raised.value.code == "DG-8003"


def test_nested_and_list_fields_contribute_their_text() -> None:
    body = {"author": {"name": "Ada"}, "tags": ["math", 1843, True], "_x": "no"}
    assert indexed_text(body, ["author.name", "tags", "missing"]) == "Ada\nmath\n1843"


@pytest.mark.parametrize("fields", [[], "title", ["_id"], ["a..b"], [1]])
def test_malformed_field_lists_are_refused(fields: Any) -> None:
    with pytest.raises(ValueError, match=r"at least one field|is not a field name"):
        fields_validate(fields)


# --- through the HTTP API ------------------------------------------------------------------


@pytest.fixture
def reader_api(indexed: Any, issue_token: Any) -> APIClient:
    cache.clear()
    fast_cli_application()
    client = APIClient()
    token = issue_token(person("rita", "acme", "reader"), "read")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_search_over_http_ranks_and_highlights(reader_api: APIClient) -> None:
    body = reader_api.get(SEARCH, {"q": "fox"}).json()
    assert [r["_id"] for r in body["results"]] == ["often", "once"]
    assert "<mark>" in body["results"][0]["highlight"].lower()
    assert body["results"][0]["document"]["title"] == "Fox news"
    assert body["nextOffset"] is None
    first = reader_api.get(SEARCH, {"q": "fox", "limit": "1"}).json()
    assert first["nextOffset"] == 1


def test_search_over_http_refuses_an_empty_query(reader_api: APIClient) -> None:
    response = reader_api.get(SEARCH, {"q": "  "})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "DG-8003"


def test_search_over_http_on_a_collection_without_an_index(
    reader_api: APIClient, indexed: Any
) -> None:
    search_index_remove(collection_id=indexed.pk)
    response = reader_api.get(SEARCH, {"q": "fox"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DG-8007"


def test_search_over_http_needs_read_access(indexed: Any, issue_token: Any) -> None:
    fast_cli_application()
    outsider = issue_token(person("olga", "other", "admin"), "read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {outsider}")
    assert client.get(SEARCH, {"q": "fox"}).json()["error"]["code"] == "DG-3001"
    assert APIClient().get(SEARCH, {"q": "fox"}).status_code == 401
