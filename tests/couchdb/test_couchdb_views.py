"""CouchDB `_changes` through a Mango selector (`filter=_selector`) or a DataGate data view
(`filter=_view&view=NAME`): only matching documents, deletes always, DG codes for bad input."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.access import System
from replication import data_views
from tests.support.couchdb_inprocess import couch, replicated
from tests.support.fast_accounts import fast_cli_application, person

pytestmark = [pytest.mark.storage, pytest.mark.django_db(transaction=True)]

DB = "acme/notes"


@pytest.fixture
def ann(collection: Any, issue_token: Any) -> str:
    fast_cli_application()
    user = person("ann", "acme", "writer")
    data_views.view_create(
        actor=System("test"),
        tenant=collection.tenant,
        collection_name="notes",
        name="mine",
        selector={"status": "open", "owner": "{username}"},
    )
    return str(issue_token(user, "read write"))


async def _seed(token: str) -> None:
    docs = [
        replicated("a", "1-a", status="open", owner="ann"),
        replicated("b", "1-a", status="done", owner="ann"),
        replicated("c", "1-a", status="open", owner="bob"),
        replicated("d", "1-a", _deleted=True),
    ]
    status, _ = await couch("POST", f"{DB}/_bulk_docs", token, {"docs": docs, "new_edits": False})
    assert status == 201


async def test_changes_through_a_selector_and_a_view(ann: str) -> None:
    await _seed(ann)
    status, body = await couch(
        "POST",
        f"{DB}/_changes",
        ann,
        {"selector": {"status": "open"}},
        query={"filter": "_selector"},
    )
    assert status == 200
    assert sorted(r["id"] for r in body["results"]) == ["a", "c", "d"]  # the delete passes
    status, body = await couch(
        "GET", f"{DB}/_changes", ann, query={"filter": "_view", "view": "mine"}
    )
    assert status == 200
    assert sorted(r["id"] for r in body["results"]) == ["a", "d"]


@pytest.mark.parametrize(
    ("query", "body", "status", "code"),
    [
        ({"filter": "_selector"}, {"selector": {"a": {"$regex": "x"}}}, 400, "DG-4102"),
        ({"filter": "_selector"}, {"selector": [1]}, 400, "DG-4101"),
        ({"filter": "_view", "view": "nope"}, {}, 404, "DG-4105"),
    ],
)
async def test_bad_filters_get_their_codes(
    ann: str, query: dict[str, str], body: dict[str, Any], status: int, code: str
) -> None:
    got, answer = await couch("POST", f"{DB}/_changes", ann, body, query=query)
    assert got == status
    assert answer["reason"].startswith(code)
