"""Mango selectors: parsing, hostile input, and Python evaluation equal to the SQL translation.

The storage test runs on SQLite here and on PostgreSQL under `make test`'s `-m storage` pass:
for hypothesis-generated documents and selectors, the documents SQL selects (JSON1 / jsonb)
are exactly those Python's evaluator matches. `DATAGATE_MANGO_EXAMPLES` runs more examples.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import DataGateError
from replication.protocol import mango
from tests.support.mango_strategies import EXAMPLES, bodies, selectors

# --- semantics, table-driven ------------------------------------------------------------------

TASK = {"status": "open", "owner": "alice", "n": 3, "done": False, "meta": {"tag": "x", "v": 1.5}}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"status": "open"}, True),
        ({"status": "closed"}, False),
        ({"status": "open", "owner": "bob"}, False),
        ({"n": {"$gt": 2}}, True),
        ({"n": {"$gte": 3, "$lt": 4}}, True),
        ({"n": {"$gt": "2"}}, False),  # a string never compares with a number
        ({"n": 3.0}, True),
        ({"done": 0}, False),  # false is not 0
        ({"done": False}, True),
        ({"meta.tag": "x"}, True),
        ({"meta": {"v": {"$lte": 1.5}}}, True),
        ({"missing": {"$exists": False}}, True),
        ({"meta.tag": {"$exists": True}}, True),
        ({"missing": {"$ne": 1}}, False),  # $ne needs the field
        ({"$not": {"missing": 1}}, True),
        ({"status": {"$in": ["open", "new"]}}, True),
        ({"status": {"$nin": ["open"]}}, False),
        ({"$or": [{"n": 1}, {"owner": "alice"}]}, True),
        ({"$and": [{"n": 3}, {"owner": {"$ne": "alice"}}]}, False),
        ({"owner": {"$not": {"$eq": "bob"}}}, True),
        ({"meta.tag.deeper": {"$exists": True}}, False),
    ],
)
def test_selector_semantics(selector: dict[str, Any], expected: bool) -> None:
    assert mango.parse(selector).matches(TASK) is expected


def test_parameters_are_bound_from_the_session() -> None:
    parsed = mango.parse({"status": "open", "owner": "{username}"})
    assert parsed.parameters == {"username"}
    assert parsed.bind({"username": "alice", "tenant": "acme"}).matches(TASK)
    assert not parsed.bind({"username": "bob", "tenant": "acme"}).matches(TASK)


def test_projection_keeps_only_the_fields_named() -> None:
    fields = mango.parse_fields(["status", "meta.v", "nope"])
    assert mango.project(TASK, fields) == {"status": "open", "meta": {"v": 1.5}}


# --- hostile selectors: a DG code that names the bad part --------------------------------------


@pytest.mark.parametrize(
    ("selector", "code", "names"),
    [
        ([], "DG-4101", "selector"),
        ({"a": {"$regex": "x"}}, "DG-4102", "a.$regex"),
        ({"$where": "1"}, "DG-4102", "$where"),
        ({"a": {"$eq": [1]}}, "DG-4101", "a.$eq"),
        ({"a": {"$gt": True}}, "DG-4101", "a.$gt"),
        ({"a": {"$in": "x"}}, "DG-4101", "a.$in"),
        ({"a": {"$exists": 1}}, "DG-4101", "a.$exists"),
        ({"$or": []}, "DG-4101", "$or"),
        ({"a": {"$eq": 1, "b": 2}}, "DG-4101", "a"),
        ({"a..b": 1}, "DG-4101", "a..b"),
        ({'a"b': 1}, "DG-4101", 'a"b'),
        ({"a": {"$eq": 2**60}}, "DG-4101", "a.$eq"),
        ({"a": {"$eq": float("nan")}}, "DG-4101", "a.$eq"),
        ({"a": "{password}"}, "DG-4104", "{password}"),
        ({"a": {"$in": list(range(300))}}, "DG-4103", "a.$in"),
        ({"$eq": 1}, "DG-4101", "$eq"),
    ],
)
def test_bad_selectors_get_a_code_naming_the_part(selector: Any, code: str, names: str) -> None:
    with pytest.raises(DataGateError) as caught:
        mango.parse(selector)
    assert caught.value.code == code
    assert names in caught.value.text


def test_a_deep_selector_is_refused() -> None:
    selector: dict[str, Any] = {"a": 1}
    for _ in range(50):
        selector = {"$not": selector}
    with pytest.raises(DataGateError) as caught:
        mango.parse(selector)
    assert caught.value.code == "DG-4103"


def test_a_huge_selector_is_refused() -> None:
    selector = {"$or": [{f"f{i}": i} for i in range(199)] + [{"$and": [{"x": 1}, {"y": 2}]}]}
    with pytest.raises(DataGateError) as caught:
        mango.parse(selector)
    assert caught.value.code == "DG-4103"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(json_values)
def test_any_json_value_parses_or_gets_a_selector_code(raw: Any) -> None:
    refused: DataGateError | None = None
    try:
        parsed = mango.parse(raw)
    except DataGateError as error:
        refused = error
    if refused is not None:
        assert refused.code in {"DG-4101", "DG-4102", "DG-4103", "DG-4104"}
        return
    if not parsed.parameters:
        parsed.matches(TASK)  # evaluating never raises


# --- Python evaluation equals the SQL translation ----------------------------------------------


@pytest.mark.storage
@pytest.mark.django_db
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(docs=st.lists(bodies, min_size=1, max_size=12), raw=selectors)
def test_python_evaluation_equals_the_sql_translation(
    docs: list[dict[str, Any]], raw: dict[str, Any], collection: Any
) -> None:
    # What the server stores is what JSON round-trips (the door refuses the rest).
    docs = [json.loads(json.dumps(body)) for body in docs]
    with transaction.atomic():
        _compare(docs, raw, collection)


def _compare(docs: list[dict[str, Any]], raw: dict[str, Any], collection: Any) -> None:
    from replication.data_views import documents_matching
    from replication.models import Document

    Document.objects.filter(collection=collection).delete()
    Document.objects.bulk_create(
        Document(collection=collection, doc_id=f"d{i}", body=body, revision=1, modified=1, seq=i)
        for i, body in enumerate(docs)
    )
    selector = mango.parse(raw)
    expected = {f"d{i}" for i, body in enumerate(docs) if selector.matches(body)}
    queryset = Document.objects.filter(collection=collection)
    found = set(documents_matching(queryset, selector=selector).values_list("doc_id", flat=True))
    assert found == expected, (raw, docs)
