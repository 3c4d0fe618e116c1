"""GraphQL at /graphql/ through Django's test client: the same access door, the same services
and the DG codes in `extensions.code` (docs/graphql.md). The real-daphne conversations, with a
GraphQL client library over HTTP and websocket, are in tests/graphql/test_graphql_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.test import Client

from accounts.access import System
from accounts.services import key_rule_add
from replication import data_views
from replication.services.documents import document_put
from tests.support.fast_accounts import fast_cli_application, person

# Resolvers reach the database through database_sync_to_async, which closes the test's
# connection between calls: only a committed database survives that.
pytestmark = pytest.mark.django_db(transaction=True)
SYSTEM = System("test")
OPEN_TASKS = {"status": "open", "owner": "{username}"}


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    cache.clear()


@pytest.fixture
def tasks(tenant: Any) -> Any:
    from replication.services.engine import collection_get_or_create

    found = collection_get_or_create(tenant=tenant, name="tasks")[0]
    rows: dict[str, dict[str, Any]] = {
        "t1": {"status": "open", "owner": "rita", "title": "one"},
        "t2": {"status": "done", "owner": "rita", "title": "two"},
        "t3": {"status": "open", "owner": "wendy", "title": "three"},
        "t4": {"status": "open", "owner": "rita", "title": "four", "secret": True},
        "secret-1": {"status": "open", "owner": "rita", "title": "hidden"},
    }
    for doc_id, body in rows.items():
        document_put(actor=SYSTEM, collection_id=found.pk, doc_id=doc_id, body=body, origin="t")
    key_rule_add(
        tenant=tenant, collection_name="tasks", pattern="secret-*", effect="deny", actions=["read"]
    )
    data_views.view_create(
        actor=SYSTEM,
        tenant=tenant,
        collection_name="tasks",
        name="open-tasks",
        selector=OPEN_TASKS,
        fields=["title", "owner", "status"],
    )
    return found


@pytest.fixture
def tokens(issue_token: Any, tasks: Any) -> dict[str, str]:
    fast_cli_application()
    rita = person("rita", "acme", "writer")
    return {
        "rita": issue_token(rita, "read write topics"),
        "rita-read": issue_token(rita, "read"),
        "reader": issue_token(person("rex", "acme", "reader"), "read write"),
    }


def gql(token: str | None, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = Client().post(
        "/graphql/",
        json.dumps({"query": query, "variables": variables or {}}),
        content_type="application/json",
        headers=headers,
    )
    assert answer.status_code in (200, 400), answer.content
    return answer.json()


def codes(result: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in result.get("errors") or []]


DOCS = """query($view: String, $selector: JSON, $after: String, $first: Int!) {
  documents(tenant: "acme", collection: "tasks", view: $view, selector: $selector,
            after: $after, first: $first) {
    documents { id revision body seq } endCursor hasMore } }"""


def test_documents_by_view_selector_and_id_show_only_what_the_reader_may_read(
    tokens: dict[str, str],
) -> None:
    token = tokens["rita"]
    by_view = gql(token, DOCS, {"view": "open-tasks", "first": 100})["data"]["documents"]
    assert [d["id"] for d in by_view["documents"]] == ["t1", "t4"]  # secret-1 hidden by a rule
    assert "secret" not in by_view["documents"][1]["body"]  # projected to the view's fields
    selected = gql(token, DOCS, {"selector": {"status": "done"}, "first": 100})["data"]
    assert [d["id"] for d in selected["documents"]["documents"]] == ["t2"]
    everything = gql(token, DOCS, {"first": 100})["data"]["documents"]["documents"]
    assert [d["id"] for d in everything] == ["t1", "t2", "t3", "t4"]
    one = gql(token, 'query { document(tenant: "acme", collection: "tasks", id: "t3") { body } }')
    assert one["data"]["document"]["body"]["title"] == "three"
    hidden = 'query { document(tenant: "acme", collection: "tasks", id: "secret-1") { id } }'
    assert gql(token, hidden)["data"]["document"] is None


def test_documents_page_by_cursor_on_seq(tokens: dict[str, str]) -> None:
    seen: list[str] = []
    after = None
    while True:
        page = gql(tokens["rita"], DOCS, {"first": 2, "after": after})["data"]["documents"]
        seen += [d["id"] for d in page["documents"]]
        seqs = [d["seq"] for d in page["documents"]]
        assert seqs == sorted(seqs)
        if not page["hasMore"]:
            break
        after = page["endCursor"]
    assert seen == ["t1", "t2", "t3", "t4"]


CHANGES = """query($markers: MarkersInput, $view: String) {
  changes(tenant: "acme", collection: "tasks", markers: $markers, view: $view, first: 500) {
    changes { id deleted body } reset startMarkers { seq epoch } endMarkers { seq epoch }
    hasMore } }"""


def test_changes_since_a_marker_through_the_collection_and_a_view(tokens: dict[str, str]) -> None:
    token = tokens["rita"]
    first = gql(token, CHANGES)["data"]["changes"]
    assert first["reset"] is False
    assert first["hasMore"] is False
    assert {c["id"] for c in first["changes"]} == {"t1", "t2", "t3", "t4"}
    marker = first["endMarkers"]
    gql(
        token,
        'mutation { putDocument(tenant: "acme", collection: "tasks", id: "t1", '
        'body: {status: "done", owner: "rita", title: "one"}) { revision } }',
    )
    later = gql(token, CHANGES, {"markers": marker})["data"]["changes"]
    assert [(c["id"], c["body"]["status"]) for c in later["changes"]] == [("t1", "done")]
    view_first = gql(token, CHANGES, {"view": "open-tasks"})["data"]["changes"]
    assert [c["id"] for c in view_first["changes"]] == ["t4"]
    view_marker = view_first["endMarkers"]
    assert view_marker["epoch"] != marker["epoch"]  # a view has its own markers
    gql(
        token,
        'mutation { putDocument(tenant: "acme", collection: "tasks", id: "t4", '
        'body: {status: "done", owner: "rita", title: "four"}) { revision } }',
    )
    moved_out = gql(token, CHANGES, {"view": "open-tasks", "markers": view_marker})
    assert [(c["id"], c["deleted"]) for c in moved_out["data"]["changes"]["changes"]] == [
        ("t4", True)
    ]


PUT = """mutation($id: String!, $body: JSON!, $expected: Int) {
  putDocument(tenant: "acme", collection: "tasks", id: $id, body: $body,
              expectedRevision: $expected) { id revision body origin } }"""
DELETE = """mutation($id: String!, $expected: Int) {
  deleteDocument(tenant: "acme", collection: "tasks", id: $id, expectedRevision: $expected) }"""


def test_put_and_delete_with_an_expected_revision(tokens: dict[str, str]) -> None:
    token = tokens["rita"]
    made = gql(token, PUT, {"id": "n1", "body": {"a": 1}, "expected": 0})["data"]["putDocument"]
    assert made["revision"] == 1
    assert made["origin"] == "graphql:rita"
    stale = gql(token, PUT, {"id": "n1", "body": {"a": 2}, "expected": 0})
    assert codes(stale) == ["DG-4009"]
    assert gql(token, PUT, {"id": "n1", "body": {"a": 2}, "expected": 1})["data"]
    assert codes(gql(token, DELETE, {"id": "n1", "expected": 1})) == ["DG-4009"]
    assert gql(token, DELETE, {"id": "n1", "expected": 2})["data"]["deleteDocument"] is True


def test_the_access_door_refuses_with_dg_codes(tokens: dict[str, str]) -> None:
    assert codes(gql(None, 'query { collections(tenant: "acme") { name } }')) == ["DG-1001"]
    assert codes(gql("nope", 'query { collections(tenant: "acme") { name } }')) == ["DG-1001"]
    assert codes(gql(tokens["rita-read"], PUT, {"id": "x", "body": {}})) == ["DG-1002"]
    assert codes(gql(tokens["reader"], PUT, {"id": "x", "body": {}})) == ["DG-3002"]
    missing = 'query { documents(tenant: "acme", collection: "nope") { hasMore } }'
    assert codes(gql(tokens["rita"], missing)) == ["DG-3001"]
    # Documents entering pass the one validation door.
    deep: Any = 1
    for _ in range(80):
        deep = [deep]
    bad = gql(tokens["rita"], PUT, {"id": "x", "body": {"deep": deep}})
    assert codes(bad) == ["DG-4011"]
    assert codes(gql(tokens["rita"], PUT, {"id": "", "body": {}})) == ["DG-4002"]


def test_topics_publish_read_and_commit(tokens: dict[str, str], tenant: Any) -> None:
    from topics.services import topic_create

    topic_create(tenant=tenant, name="news", scope="global", owner_id=None)
    token = tokens["rita"]
    published = gql(
        token,
        'mutation { publish(tenant: "acme", topic: "news", messages: '
        '[{messageId: "m1", payload: {n: 1}}, {messageId: "m2", payload: 2}]) }',
    )
    assert published["data"]["publish"] == [1, 2]
    listed = gql(token, 'query { topics(tenant: "acme") { name lastOffset } }')["data"]
    assert listed["topics"] == [{"name": "news", "lastOffset": 2}]
    read = (
        'query { messages(tenant: "acme", topic: "news") '
        "{ messages { offset payload } committed } }"
    )
    assert gql(token, read)["data"]["messages"]["messages"][0]["payload"] == {"n": 1}
    commit = 'mutation { commitOffset(tenant: "acme", topic: "news", offset: 2) }'
    assert gql(token, commit)["data"]["commitOffset"] == 2
    assert gql(token, read)["data"]["messages"]["committed"] == 2
    assert codes(gql(tokens["rita-read"], read)) == ["DG-1002"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (
            "{ __schema { types { fields { type { fields { type { fields { type { fields "
            "{ name } } } } } } } } } }",
            "DG-8009",
        ),
        ("{ " + " ".join(f"a{i}: __typename" for i in range(20)) + " }", "DG-8009"),
        ("{ __typename " + "__typename " * 2500 + "}", "DG-8009"),
        ("{ collections(tenant: 5) { name } }", "DG-8008"),
        ('{ collections(tenant: "acme") { nope } }', "DG-8008"),
        ("{ collections(", "DG-8008"),
        ('{ documents(tenant: "acme", collection: "tasks", first: 5000) { hasMore } }', "DG-8003"),
        (
            '{ documents(tenant: "acme", collection: "tasks", selector: {a: {$regex: "x"}}) '
            "{ hasMore } }",
            "DG-8008",
        ),
    ],
)
def test_hostile_queries_get_clear_coded_errors(
    tokens: dict[str, str], query: str, code: str
) -> None:
    result = gql(tokens["rita"], query)
    assert codes(result) == [code]
    assert result["errors"][0]["message"].startswith(code)


def test_a_bad_selector_names_the_offending_part(tokens: dict[str, str]) -> None:
    result = gql(tokens["rita"], DOCS, {"selector": {"status": {"$regex": "x"}}, "first": 1})
    assert codes(result) == ["DG-4102"]
    assert "status.$regex" in result["errors"][0]["message"]
    wrong = gql(tokens["rita"], DOCS, {"first": "many"})
    assert codes(wrong) == ["DG-8008"]


def test_graphiql_is_served_offline(tokens: dict[str, str]) -> None:
    page = Client().get("/graphql/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    html = page.content.decode()
    assert "graphiql.min.js" in html
    assert "//unpkg" not in html
    assert "cdn" not in html.lower()
    assert "https://" not in html
    for asset in (
        "graphene_django_graphiql_static/graphiql.min.js",
        "graphene_django_graphiql_static/graphql-ws.min.js",
        "graphqlapi/graphiql-page.js",
    ):
        assert finders.find(asset), asset


def test_generated_queries_get_results_or_coded_errors_never_a_500(
    tokens: dict[str, str],
) -> None:
    """Queries and mutations generated from the schema (hypothesis-graphql), with junk
    arguments of the right types: every error carries a DG code, none is an internal one."""
    import hypothesis_graphql
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis_graphql import nodes

    from graphqlapi.schema import schema

    source = schema.as_str()
    scalars = {
        "Long": st.integers(-(2**70), 2**70).map(nodes.Int),
        "JSON": st.one_of(st.integers(), st.text(max_size=20)).map(str).map(nodes.String),
    }
    strategy = hypothesis_graphql.queries(
        source, custom_scalars=scalars
    ) | hypothesis_graphql.mutations(source, custom_scalars=scalars)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(query=strategy)
    def ask(query: str) -> None:
        result = gql(tokens["rita"], query)
        for code in codes(result):
            assert code.startswith("DG-"), (query, result)
            assert code != "DG-5003", (query, result)

    ask()
