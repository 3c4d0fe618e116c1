"""Rows that cannot be served, planted straight into the database (as rows written before the
document door, or by hand, would be): pages leave them out, `datagate_verify` finds them and
`datagate_quarantine` repairs or removes them. Marked `storage`: SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from accounts.access import System
from replication.models import Document, ErrorEvent, QuarantinedDocument
from replication.protocol.messages import encode_served
from replication.quarantine import collection_quarantine, unservable_rows
from replication.selectors import changes_since, feed_from_changes
from replication.services.engine import batch_apply
from replication.verify import collection_verify

pytestmark = [pytest.mark.storage, pytest.mark.django_db]

T0 = 1_700_000_000_000
POSTGRES = "postgresql"


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def seeded(collection: Any, ids: list[str]) -> None:
    feed = {"changeSet": [{"_id": i, "_revision": 1, "_modified": T0, "v": i} for i in ids]}
    batch_apply(actor=System("test"), collection_id=collection.pk, feed=feed, origin="r")


def plant(collection: Any, doc_id: str, body: Any) -> bool:
    """Overwrite a stored body behind the services' back; False if the database refuses."""
    try:
        with transaction.atomic():
            Document.objects.filter(collection=collection, doc_id=doc_id).update(body=body)
    except (DatabaseError, ValueError):
        return False
    return True


def test_what_each_backend_can_hold(collection: Any) -> None:
    """PostgreSQL's jsonb refuses lone surrogates, NUL and NaN itself; SQLite stores the first
    two, and its JSON_VALID check constraint refuses NaN (not JSON)."""
    seeded(collection, ["a", "b", "c"])
    held = {
        "surrogate": plant(collection, "a", {"t": "\ud800"}),
        "nul": plant(collection, "b", {"t": "a\x00b"}),
        "nan": plant(collection, "c", {"n": math.nan}),
    }
    expected = connection.vendor != POSTGRES
    assert held == {"surrogate": expected, "nul": expected, "nan": False}


def test_pages_leave_out_what_cannot_be_encoded_and_verify_then_quarantine_fix_it(
    collection: Any,
) -> None:
    good = [f"good-{n}" for n in range(5)]
    seeded(collection, [*good, "surrogate", "nan", "deep", "nul"])
    sqlite = connection.vendor != POSTGRES
    if sqlite:
        assert plant(collection, "surrogate", {"t": "x\ud800y", "keep": 1})
        assert plant(collection, "nan", {"n": "\udfff", "keep": 2})
        assert plant(collection, "nul", {"t": "a\x00b"})
    assert plant(collection, "deep", {"d": deep(80)})

    # A page never dies: what cannot be encoded is left out, the rest goes as stored.
    changes = changes_since(collection_id=collection.pk, after_seq=0, limit=100)
    text, skipped = encode_served({"feed": feed_from_changes(changes)})
    served = {doc["_id"] for doc in json.loads(text)["feed"]["changeSet"]}
    assert set(good) <= served
    assert "deep" in served
    assert {doc_id for doc_id, _ in skipped} == ({"surrogate", "nan"} if sqlite else set())
    text.encode("utf-8")

    # datagate_verify finds every row the door would refuse (DG-7108).
    report = collection_verify(collection_id=collection.pk)
    found = {p.params["doc_id"]: p.params["reason"] for p in report.problems if p.code == "DG-7108"}
    expected = {"deep": "DG-4011"}
    if sqlite:
        expected |= {"surrogate": "DG-4010", "nan": "DG-4010", "nul": "DG-4010"}
    assert found == expected

    done = collection_quarantine(collection_id=collection.pk, repair=True)
    actions = {item.doc_id: item.action for item in done}
    assert actions == {doc_id: "deleted" if doc_id == "deep" else "repaired" for doc_id in found}
    assert set(QuarantinedDocument.objects.values_list("doc_id", flat=True)) == set(found)
    assert not list(unservable_rows(collection_id=collection.pk))
    bodies = dict(Document.objects.filter(collection=collection).values_list("doc_id", "body"))
    assert "deep" not in bodies
    if sqlite:
        assert bodies["surrogate"] == {"t": "x\ufffdy", "keep": 1}
        assert bodies["nan"] == {"n": "\ufffd", "keep": 2}
    changes = changes_since(collection_id=collection.pk, after_seq=0, limit=100)
    text, skipped = encode_served({"feed": feed_from_changes(changes)})
    assert skipped == []
    assert "deep" in json.loads(text)["feed"]["tombstoneMap"]


@pytest.mark.skipif("connection.vendor == 'postgresql'")
def test_the_http_api_and_the_command_with_a_planted_row(
    collection: Any, issue_token: Any, capsys: Any
) -> None:
    from rest_framework.test import APIClient

    from tests.support.fast_accounts import fast_cli_application, person

    seeded(collection, ["good", "bad"])
    assert plant(collection, "bad", {"t": "\udc00"})
    fast_cli_application()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issue_token(person('rita', 'acme', 'reader'))}")
    base = "/api/v1/tenants/acme/collections/notes"
    changes = client.get(f"{base}/changes/")
    assert changes.status_code == 200
    assert [d["_id"] for d in changes.json()["feed"]["changeSet"]] == ["good"]
    listing = client.get(f"{base}/documents/")
    assert listing.status_code == 200
    assert [d["_id"] for d in listing.json()["documents"]] == ["good"]
    one = client.get(f"{base}/documents/bad")
    assert one.json()["error"]["code"] == "DG-5005"
    assert ErrorEvent.objects.filter(code="DG-5005").count() == 3

    with pytest.raises(CommandError):
        call_command("datagate_verify", "--collection", "acme/notes")
    assert "DG-7108" in capsys.readouterr().err
    call_command("datagate_quarantine", "--collection", "acme/notes", "--dry-run")
    assert "would be deleted" in capsys.readouterr().out
    call_command("datagate_quarantine", "--collection", "acme/notes")
    assert "'bad' DG-4010: deleted" in capsys.readouterr().out
    assert client.get(f"{base}/documents/bad").status_code == 404
