"""The CouchDB door's endpoints, shapes and status codes, in-process (couchdb/asgi.py).

The real PouchDB client runs against a real daphne in tests/couchdb/test_couchdb_pouchdb.py; these
pin what it relies on, one endpoint at a time, on SQLite and on PostgreSQL (`storage`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.access import System
from couchdb import revs
from tests.support.couchdb_inprocess import couch, replicated
from tests.support.fast_accounts import fast_cli_application, person

pytestmark = [pytest.mark.storage, pytest.mark.django_db(transaction=True)]

DB = "acme/notes"
SYSTEM = System("couchdb tests: a write through another door")


@pytest.fixture
def people(collection: Any, issue_token: Any) -> dict[str, str]:
    fast_cli_application()
    return {
        "ann": issue_token(person("ann", "acme", "writer"), "read write"),
        "rita": issue_token(person("rita", "acme", "reader"), "read write"),
        "nobody": issue_token(person("nobody", "other", "writer"), "read write"),
    }


async def test_server_root_has_a_stable_uuid_and_couchdb_shape() -> None:
    status, first = await couch("GET", "acme/")
    _, second = await couch("GET", "acme")
    assert status == 200
    assert first["couchdb"] == "Welcome"
    assert first["uuid"] == second["uuid"]
    _, other = await couch("GET", "other/")
    assert other["uuid"] != first["uuid"]


async def test_database_info_create_and_refusals(people: dict[str, str]) -> None:
    status, body = await couch("GET", f"{DB}/")
    assert status == 401
    assert body["error"] == "unauthorized"
    assert body["reason"].startswith("DG-1001")
    status, info = await couch("GET", f"{DB}/", people["ann"])
    assert status == 200
    assert info["db_name"] == "notes"
    assert info["doc_count"] == 0
    assert isinstance(info["update_seq"], str)
    status, body = await couch("GET", "acme/missing/", people["ann"])
    assert status == 404
    assert body["error"] == "not_found"
    assert (await couch("GET", f"{DB}/", people["nobody"]))[0] == 404
    assert (await couch("PUT", "acme/missing/", people["rita"]))[0] == 403
    status, body = await couch("PUT", "acme/missing/", people["ann"])
    assert (status, body) == (201, {"ok": True})
    status, body = await couch("PUT", "acme/missing/", people["ann"])
    assert status == 412
    assert body["error"] == "file_exists"


async def test_local_checkpoints_are_404_until_saved(people: dict[str, str]) -> None:
    token = people["ann"]
    status, body = await couch("GET", f"{DB}/_local/abc", token)
    assert status == 404
    assert body["error"] == "not_found"
    status, saved = await couch("PUT", f"{DB}/_local/abc", token, {"last_seq": "5-1"})
    assert status == 201
    assert saved["ok"]
    assert saved["id"] == "_local/abc"
    status, again = await couch("PUT", f"{DB}/_local/abc", token, {"last_seq": "9-1"})
    assert again["rev"] != saved["rev"]
    status, got = await couch("GET", f"{DB}/_local/abc", token)
    assert status == 200
    assert got["last_seq"] == "9-1"
    assert got["_id"] == "_local/abc"
    # A reader may write checkpoints too: PouchDB writes them on both sides of a pull.
    assert (await couch("PUT", f"{DB}/_local/r", people["rita"], {"x": 1}))[0] == 201
    # They never show as documents.
    _, changes = await couch("GET", f"{DB}/_changes", token)
    assert changes["results"] == []


async def test_replicated_push_then_changes_revs_diff_and_bulk_get(people: dict[str, str]) -> None:
    token = people["ann"]
    docs = [
        replicated("a", "2-bb", "1-aa", title="A"),
        replicated("b", "1-cc", title="B"),
        replicated("c", "1-dd", deleted=True),
    ]
    status, body = await couch(
        "POST", f"{DB}/_bulk_docs", token, {"docs": docs, "new_edits": False}
    )
    assert (status, body) == (201, [])

    status, diff = await couch(
        "POST", f"{DB}/_revs_diff", token, {"a": ["2-bb", "1-aa", "3-zz"], "x": ["1-xx"]}
    )
    assert status == 200
    assert diff == {"a": {"missing": ["3-zz"]}, "x": {"missing": ["1-xx"]}}

    status, changes = await couch("GET", f"{DB}/_changes", token, query={"style": "all_docs"})
    assert status == 200
    rows = {r["id"]: r for r in changes["results"]}
    assert rows["a"]["changes"] == [{"rev": "2-bb"}]
    assert rows["c"]["deleted"] is True
    assert changes["last_seq"] == rows["c"]["seq"]
    seqs = [int(r["seq"].split("-")[0]) for r in changes["results"]]
    assert seqs == sorted(seqs)

    # since + limit page through, each page's last_seq is where the next starts.
    _, first = await couch("GET", f"{DB}/_changes", token, query={"limit": 1})
    assert len(first["results"]) == 1
    assert first["pending"] >= 1
    _, rest = await couch("GET", f"{DB}/_changes", token, query={"since": first["last_seq"]})
    assert [r["id"] for r in rest["results"]] == ["b", "c"]

    status, got = await couch(
        "POST",
        f"{DB}/_bulk_get",
        token,
        {"docs": [{"id": "a", "rev": "2-bb"}, {"id": "c", "rev": "1-dd"}, {"id": "zz"}]},
        query={"revs": "true", "latest": "true"},
    )
    assert status == 200
    a, c, zz = got["results"]
    assert a["docs"][0]["ok"] == {
        "_id": "a",
        "_rev": "2-bb",
        "title": "A",
        "_revisions": {"start": 2, "ids": ["bb", "aa"]},
    }
    assert c["docs"][0]["ok"]["_deleted"] is True
    assert zz["docs"][0]["error"]["error"] == "not_found"

    # The same push again changes nothing (replication retries).
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": docs, "new_edits": False})
    _, again = await couch("GET", f"{DB}/_changes", token)
    assert again["last_seq"] == changes["last_seq"]


async def test_a_conflict_is_won_by_the_rule_and_the_losing_branch_is_closed(
    people: dict[str, str],
) -> None:
    token = people["ann"]
    base = replicated("d", "1-aa", v=0)
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": [base], "new_edits": False})
    left = replicated("d", "2-left", "1-aa", v="left")
    right = replicated("d", "2-right", "1-aa", v="right")
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": [left], "new_edits": False})
    await asyncio.sleep(0.005)
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": [right], "new_edits": False})

    _, changes = await couch("GET", f"{DB}/_changes", token, query={"style": "all_docs"})
    (row,) = changes["results"]
    leaves = [c["rev"] for c in row["changes"]]
    assert leaves[0] == "2-right"  # arrived last: the later _modified wins
    assert len(leaves) == 2
    assert leaves[1].startswith("3-")
    _, got = await couch(
        "POST",
        f"{DB}/_bulk_get",
        token,
        {"docs": [{"id": "d", "rev": r} for r in leaves]},
        query={"revs": "true"},
    )
    winner, closed = (r["docs"][0]["ok"] for r in got["results"])
    assert winner["v"] == "right"
    assert "_deleted" not in winner
    assert closed["_deleted"] is True
    assert closed["_revisions"]["ids"][1:] == ["left", "aa"]
    _, diff = await couch("POST", f"{DB}/_revs_diff", token, {"d": ["2-left", *leaves]})
    assert diff == {}
    status, single = await couch("GET", f"{DB}/d", token, query={"conflicts": "true"})
    assert status == 200
    assert single["_rev"] == "2-right"
    assert "_conflicts" not in single

    # A losing branch that arrives later is closed too, and the winner gets a new seq so
    # that its writer hears about it.
    late = replicated("d", "2-late", "1-aa", v="late")
    from replication.services.documents import document_put

    collection_id = await _collection_id()
    await sync_to_async(document_put)(
        actor=SYSTEM, collection_id=collection_id, doc_id="d", body={"v": "server"}, origin="api:x"
    )
    _, before = await couch("GET", f"{DB}/_changes", token)
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": [late], "new_edits": False})
    _, after = await couch(
        "GET", f"{DB}/_changes", token, query={"since": before["last_seq"], "style": "all_docs"}
    )
    (row,) = after["results"]
    assert len(row["changes"]) == 3


async def _collection_id() -> int:
    from replication.models import Collection

    return await sync_to_async(lambda: Collection.objects.get(name="notes").pk)()


async def test_app_edits_with_new_edits_true_and_single_document_routes(
    people: dict[str, str],
) -> None:
    token = people["ann"]
    status, created = await couch("PUT", f"{DB}/e", token, {"n": 1})
    assert status == 201
    assert created["ok"]
    assert created["rev"].startswith("1-")
    status, body = await couch("PUT", f"{DB}/e", token, {"n": 2})
    assert status == 409
    assert body["error"] == "conflict"
    status, updated = await couch("PUT", f"{DB}/e", token, {"n": 2, "_rev": created["rev"]})
    assert status == 201
    assert updated["rev"].startswith("2-")
    status, doc = await couch("GET", f"{DB}/e", token, query={"revs": "true"})
    assert doc["n"] == 2
    assert doc["_revisions"]["start"] == 2
    status, bulk = await couch(
        "POST", f"{DB}/_bulk_docs", token, {"docs": [{"_id": "f", "n": 1}, {"_id": "e", "n": 9}]}
    )
    assert status == 201
    assert bulk[0]["ok"]
    assert bulk[1]["error"] == "conflict"
    status, gone = await couch("DELETE", f"{DB}/e", token, query={"rev": updated["rev"]})
    assert status == 200
    assert gone["rev"].startswith("3-")
    status, body = await couch("GET", f"{DB}/e", token)
    assert status == 404
    assert body["reason"] == "deleted"
    status, old = await couch("GET", f"{DB}/e", token, query={"rev": gone["rev"]})
    assert status == 200
    assert old["_deleted"] is True
    status, opened = await couch("GET", f"{DB}/f", token, query={"open_revs": "all"})
    assert status == 200
    assert opened[0]["ok"]["n"] == 1
    status, body = await couch("PUT", f"{DB}/g", token, {"_attachments": {"a": {}}})
    assert status == 415
    assert body["reason"].startswith("DG-9002")
    status, body = await couch("PUT", f"{DB}/h", token, {"_secret": 1})
    assert status == 400
    assert body["reason"].startswith("DG-4005")
    status, all_docs = await couch("GET", f"{DB}/_all_docs", token, query={"include_docs": "true"})
    assert [r["id"] for r in all_docs["rows"]] == ["f"]
    assert all_docs["rows"][0]["doc"]["n"] == 1
    status, keyed = await couch("POST", f"{DB}/_all_docs", token, {"keys": ["e", "f", "zz"]})
    assert keyed["rows"][0]["value"]["deleted"] is True
    assert keyed["rows"][2] == {"key": "zz", "error": "not_found"}


async def test_writes_from_other_doors_get_revisions_that_extend_the_history(
    people: dict[str, str],
) -> None:
    from replication.services.documents import document_put

    token = people["ann"]
    collection_id = await _collection_id()
    await couch(
        "POST",
        f"{DB}/_bulk_docs",
        token,
        {"docs": [replicated("w", "1-aa", v=1)], "new_edits": False},
    )
    for value in (2, 3):
        await sync_to_async(document_put)(
            actor=SYSTEM, collection_id=collection_id, doc_id="w", body={"v": value}, origin="api:x"
        )
    _, got = await couch(
        "POST", f"{DB}/_bulk_get", token, {"docs": [{"id": "w"}]}, query={"revs": "true"}
    )
    doc = got["results"][0]["docs"][0]["ok"]
    assert doc["v"] == 3
    assert doc["_revisions"]["ids"][-1] == "aa"
    assert doc["_revisions"]["start"] == len(doc["_revisions"]["ids"])
    # Every reader derives the same id; a PouchDB edit on top of it is a plain update.
    _, again = await couch("GET", f"{DB}/w", token)
    assert again["_rev"] == doc["_rev"]
    child = replicated("w", f"{doc['_revisions']['start'] + 1}-kid", doc["_rev"], v=4)
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": [child], "new_edits": False})
    _, changes = await couch("GET", f"{DB}/_changes", token, query={"style": "all_docs"})
    assert changes["results"][-1]["changes"] == [{"rev": child["_rev"]}]


async def test_access_rules_apply_to_every_endpoint(people: dict[str, str]) -> None:
    from accounts.models import Tenant
    from accounts.services import key_rule_add

    token, reader = people["ann"], people["rita"]
    docs = [replicated("pub-1", "1-a", x=1), replicated("secret-1", "1-b", x=2)]
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": docs, "new_edits": False})
    tenant = await sync_to_async(Tenant.objects.get)(slug="acme")
    rita = await sync_to_async(get_user_model().objects.get)(username="rita")
    await sync_to_async(key_rule_add)(
        tenant=tenant,
        collection_name="notes",
        pattern="secret-*",
        effect="deny",
        actions=["read"],
        user=rita,
    )
    _, changes = await couch("GET", f"{DB}/_changes", reader)
    assert [r["id"] for r in changes["results"]] == ["pub-1"]
    _, all_docs = await couch("GET", f"{DB}/_all_docs", reader)
    assert [r["id"] for r in all_docs["rows"]] == ["pub-1"]
    _, got = await couch("POST", f"{DB}/_bulk_get", reader, {"docs": [{"id": "secret-1"}]})
    assert "error" in got["results"][0]["docs"][0]
    assert (await couch("GET", f"{DB}/secret-1", reader))[0] == 404
    status, refused = await couch(
        "POST",
        f"{DB}/_bulk_docs",
        reader,
        {"docs": [replicated("pub-2", "1-c", x=3)], "new_edits": False},
    )
    assert status == 201
    assert refused[0]["error"] == "forbidden"
    assert refused[0]["reason"].startswith("DG-3002")


async def test_a_client_behind_the_purge_horizon_is_told_to_start_over(
    people: dict[str, str],
) -> None:
    from replication.models import Collection

    token = people["ann"]
    _, info = await couch("GET", f"{DB}/", token)
    await sync_to_async(Collection.objects.filter(name="notes").update)(purge_seq=5, last_seq=9)
    status, body = await couch("GET", f"{DB}/_changes", token, query={"since": "2-1"})
    assert status == 400
    assert body["reason"].startswith("DG-9001")
    epoch = info["update_seq"].split("-")[1]
    status, body = await couch("GET", f"{DB}/_changes", token, query={"since": f"3-{epoch}"})
    assert status == 400
    status, _ = await couch("GET", f"{DB}/_changes", token, query={"since": f"6-{epoch}"})
    assert status == 200
    status, body = await couch("GET", f"{DB}/_changes", token, query={"since": "x"})
    assert status == 400
    assert body["reason"].startswith("DG-8003")


async def test_longpoll_answers_when_a_change_commits(people: dict[str, str]) -> None:
    token = people["ann"]
    _, info = await couch("GET", f"{DB}/", token)
    waiting = asyncio.ensure_future(
        couch(
            "GET",
            f"{DB}/_changes",
            token,
            query={"feed": "longpoll", "since": info["update_seq"], "timeout": 20000},
            timeout=30,
        )
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await couch("PUT", f"{DB}/live", token, {"n": 1})
    status, body = await asyncio.wait_for(waiting, 10)
    assert status == 200
    assert [r["id"] for r in body["results"]] == ["live"]
    # Without a change, the timeout answers with nothing.
    status, empty = await couch(
        "GET",
        f"{DB}/_changes",
        token,
        query={"feed": "longpoll", "since": body["last_seq"], "timeout": 200},
    )
    assert status == 200
    assert empty["results"] == []
    assert empty["last_seq"] == body["last_seq"]


async def test_post_changes_with_the_doc_ids_filter(people: dict[str, str]) -> None:
    token = people["ann"]
    docs = [replicated(f"k{i}", "1-a", i=i) for i in range(4)]
    await couch("POST", f"{DB}/_bulk_docs", token, {"docs": docs, "new_edits": False})
    status, body = await couch(
        "POST",
        f"{DB}/_changes",
        token,
        {"doc_ids": ["k1", "k3"]},
        query={"filter": "_doc_ids", "include_docs": "true"},
    )
    assert status == 200
    assert [(r["id"], r["doc"]["i"]) for r in body["results"]] == [("k1", 1), ("k3", 3)]
    status, body = await couch("GET", f"{DB}/_changes", token, query={"filter": "app/f"})
    assert status == 400
    assert body["reason"].startswith("DG-9003")


# --- bad input: a CouchDB error shape with a code, never a 500 -------------------------------

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    doc=st.fixed_dictionaries(
        {"_id": st.text(min_size=1, max_size=4)},
        optional={"_rev": junk, "_revisions": junk, "_deleted": junk, "_x": junk, "a": junk},
    )
)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_replicated_document_gets_a_result_never_a_crash(doc: dict[str, Any]) -> None:
    try:
        path = revs.path_from_doc(doc)
    except revs.BadRevision:
        return
    assert path
    assert all(revs.rev_generation(r) >= 1 for r in path)
    assert [revs.rev_generation(r) for r in path] == list(
        range(revs.rev_generation(path[0]), revs.rev_generation(path[0]) - len(path), -1)
    )


async def test_checkpoints_written_behind_reach_the_database(people: dict[str, str]) -> None:
    from couchdb.checkpoints import get_checkpoints
    from couchdb.models import LocalDocument

    token = people["ann"]
    await couch("PUT", f"{DB}/_local/cp", token, {"last_seq": "3-1"})
    await couch("PUT", f"{DB}/_local/cp", token, {"last_seq": "4-1"})
    await get_checkpoints().flush()
    stored = await sync_to_async(LocalDocument.objects.get)(doc_id="cp")
    assert stored.body == {"last_seq": "4-1"}
    assert stored.rev == "0-2"
    status, _ = await couch("DELETE", f"{DB}/_local/cp", token)
    assert status == 200
    assert (await couch("GET", f"{DB}/_local/cp", token))[0] == 404


junk_doc = st.fixed_dictionaries(
    {},
    optional={
        "_id": st.one_of(st.text(max_size=6), st.integers(), st.none(), st.just("_design/x")),
        "_rev": st.one_of(junk, st.sampled_from(["1-a", "2-b", "0-x", "3-"])),
        "_revisions": st.one_of(
            junk, st.fixed_dictionaries({"start": st.integers(-1, 3), "ids": junk})
        ),
        "_deleted": junk,
        "_attachments": junk,
        "_x": junk,
        "a": junk,
    },
)


@pytest.fixture
def ann_grant(people: dict[str, str]) -> Any:
    from couchdb.services import grant_open

    return grant_open(raw_token=people["ann"], tenant_slug="acme", name="notes")


@given(docs=st.lists(junk_doc, max_size=6), new_edits=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_bulk_docs_answers_every_document_with_ok_or_a_coded_error(
    ann_grant: Any, docs: list[dict[str, Any]], new_edits: bool
) -> None:
    from couchdb.services import docs_apply

    results = docs_apply(grant=ann_grant, docs=docs, new_edits=new_edits)
    assert len(results) == len(docs)
    for doc, result in zip(docs, results, strict=True):
        assert ("ok" in result) != ("error" in result), result
        if "error" in result:
            assert isinstance(result["reason"], str)
            assert result["reason"]
        elif new_edits:
            assert result["rev"].split("-")[0].isdigit()
        else:
            assert result["rev"] == doc["_rev"]


async def test_concurrent_writes_are_applied_together_in_order(people: dict[str, str]) -> None:
    token = people["ann"]
    answers = await asyncio.gather(
        *(couch("PUT", f"{DB}/c{i}", token, {"i": i}) for i in range(12)),
        couch("PUT", f"{DB}/c0", token, {"i": "again"}),
    )
    assert [status for status, _ in answers[1:12]] == [201] * 11
    # The same id twice without a rev: one is created, the other is a conflict.
    assert sorted([answers[0][0], answers[12][0]]) == [201, 409]
    _, changes = await couch("GET", f"{DB}/_changes", token)
    assert sorted(r["id"] for r in changes["results"]) == sorted(f"c{i}" for i in range(12))


# What the door stores: no NUL, no lone surrogate (those are refused, DG-4010).
storable_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(storable_text, inner, max_size=3),
    max_leaves=10,
)
body_strategy = st.dictionaries(
    storable_text.filter(lambda k: k != "" and not k.startswith("_")), json_value, max_size=4
)
_written = iter(range(10**9))


@given(body=body_strategy, with_revs=st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_bulk_get_after_a_replicators_changes_page_gives_back_the_stored_body(
    ann_grant: Any, body: dict[str, Any], with_revs: bool
) -> None:
    """A replicator's `_changes` page caches each leaf with its body as the stored JSON text,
    and `_bulk_get` splices it into the answer (or decodes it, when the splice screen says
    so): either way the document that comes back is the one stored."""
    import json

    from couchdb.asgi import bulk_get_body
    from couchdb.services import changes_read, docs_get_cached
    from replication.services.engine import batch_apply

    doc_id = f"spliced-{next(_written)}"
    result = batch_apply(
        actor=SYSTEM,
        collection_id=ann_grant.collection_id,
        feed={"changeSet": [{"_id": doc_id, "_revision": 1, "_modified": 1, **body}]},
        origin="other-door",
    )
    assert not result.rejected
    page = changes_read(grant=ann_grant, since=0, limit=None, all_docs=True, prefetch=True)
    row = next(r for r in page.results if r["id"] == doc_id)
    rev = row["changes"][0]["rev"]
    answer = docs_get_cached(grant=ann_grant, asked=[(doc_id, rev)], with_revs=with_revs)
    assert answer is not None
    (got,) = json.loads(bulk_get_body(answer))["results"]
    doc = got["docs"][0]["ok"]
    assert doc.pop("_id") == doc_id
    assert doc.pop("_rev") == rev
    if with_revs:
        assert doc.pop("_revisions")["start"] == 1
    # PostgreSQL's jsonb writes an integral float as an integer (the same JSON number).
    assert _numbers_as_decimals(doc) == _numbers_as_decimals(body)


def _numbers_as_decimals(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [_numbers_as_decimals(v) for v in value]
    return {k: _numbers_as_decimals(v) for k, v in value.items()}


def test_a_plain_body_is_spliced_not_decoded(ann_grant: Any) -> None:
    from couchdb.services import EncodedResult, changes_read, docs_get_cached
    from replication.services.engine import batch_apply

    batch_apply(
        actor=SYSTEM,
        collection_id=ann_grant.collection_id,
        feed={"changeSet": [{"_id": "plain", "_revision": 1, "_modified": 1, "title": "A"}]},
        origin="other-door",
    )
    page = changes_read(grant=ann_grant, since=0, limit=None, all_docs=True, prefetch=True)
    rev = next(r for r in page.results if r["id"] == "plain")["changes"][0]["rev"]
    answer = docs_get_cached(grant=ann_grant, asked=[("plain", rev)], with_revs=True)
    assert answer is not None
    assert isinstance(answer[0], EncodedResult)
