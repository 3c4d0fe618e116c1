"""One access door: every document write names its actor, and a user's writes pass the same
access decision whoever calls the service (docs/access.md, "One door")."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.access import Bearer, System
from accounts.models import KeyRule
from core.errors import DataGateError, ErrorCode
from replication.models import Document, JournalEntry, Tombstone
from replication.services.documents import document_delete, document_put
from replication.services.engine import batch_apply

SEED = System("test seed")


@pytest.fixture
def own_keys(tenant: Any) -> None:
    """The issue's rules: each user owns `user-{username}/*`; other `user-*` ids are closed."""
    everything = {"for_read": True, "for_write": True, "for_delete": True}
    KeyRule.objects.create(
        tenant=tenant,
        collection_name="notes",
        position=10,
        pattern="user-{username}/*",
        effect="allow",
        **everything,
    )
    KeyRule.objects.create(
        tenant=tenant,
        collection_name="notes",
        position=20,
        pattern="user-*",
        effect="deny",
        **everything,
    )


def refused(call: Any, **kwargs: Any) -> ErrorCode:
    with pytest.raises(DataGateError) as caught:
        call(**kwargs)
    return caught.value.error


@pytest.mark.django_db
def test_the_write_services_have_no_default_actor(collection: Any) -> None:
    with pytest.raises(TypeError):
        document_put(collection_id=collection.pk, doc_id="a", body={}, origin="t")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        document_delete(collection_id=collection.pk, doc_id="a", origin="t")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        batch_apply(collection_id=collection.pk, feed={}, origin="t")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="actor must be"):
        document_put(actor=None, collection_id=collection.pk, doc_id="a", body={}, origin="t")
    with pytest.raises(ValueError, match="System needs a purpose"):
        System("")
    assert not Document.objects.exists()


@pytest.mark.django_db
def test_a_users_writes_pass_the_key_rules_in_the_service(
    collection: Any, member: Any, own_keys: None
) -> None:
    alice = member("alice", "writer")
    document_put(
        actor=SEED, collection_id=collection.pk, doc_id="user-bob/diary", body={}, origin="s"
    )
    put = {"collection_id": collection.pk, "body": {"v": 1}, "origin": "t"}
    assert document_put(actor=alice, doc_id="user-alice/1", **put).applied == 1
    assert refused(document_put, actor=alice, doc_id="user-bob/planted", **put) is (
        ErrorCode.KEY_WRITE_DENIED
    )
    # Refused before the stored revision is looked at: no DG-4009 tells what is stored.
    conditional = {**put, "expected_revision": 7}
    assert refused(document_put, actor=alice, doc_id="user-bob/diary", **conditional) is (
        ErrorCode.KEY_WRITE_DENIED
    )
    gone = {"collection_id": collection.pk, "origin": "t"}
    assert refused(document_delete, actor=alice, doc_id="user-bob/diary", **gone) is (
        ErrorCode.KEY_DELETE_DENIED
    )
    assert refused(document_delete, actor=alice, doc_id="user-bob/missing", **gone) is (
        ErrorCode.KEY_DELETE_DENIED
    )
    document_delete(actor=alice, doc_id="user-alice/1", **gone)
    assert set(Document.objects.values_list("doc_id", flat=True)) == {"user-bob/diary"}
    assert set(Tombstone.objects.values_list("doc_id", flat=True)) == {"user-alice/1"}


@pytest.mark.django_db
def test_readers_and_strangers_write_nothing(collection: Any, member: Any, make_user: Any) -> None:
    put = {"collection_id": collection.pk, "doc_id": "a", "body": {}, "origin": "t"}
    assert refused(document_put, actor=member("rita", "reader"), **put) is ErrorCode.READ_ONLY
    assert refused(document_put, actor=make_user("olga"), **put) is ErrorCode.READ_ONLY
    inactive = member("ivan", "writer")
    inactive.is_active = False
    inactive.save()
    assert refused(document_put, actor=inactive, **put) is ErrorCode.READ_ONLY
    assert not Document.objects.exists()


@pytest.mark.django_db
def test_batch_apply_rejects_per_change_for_a_user_and_applies_the_rest(
    collection: Any, member: Any, own_keys: None
) -> None:
    alice = member("alice", "writer")
    change = {"_revision": 1, "_modified": 1_700_000_000_000}
    feed = {
        "changeSet": [{"_id": "user-alice/a", **change}, {"_id": "user-bob/b", **change}],
        "tombstoneMap": {"user-bob/c": 1_700_000_000_000},
    }
    result = batch_apply(actor=alice, collection_id=collection.pk, feed=feed, origin="phone")
    assert result.added == ["user-alice/a"]
    assert {r.doc_id: r.error.error for r in result.rejected} == {
        "user-bob/b": ErrorCode.KEY_WRITE_DENIED,
        "user-bob/c": ErrorCode.KEY_DELETE_DENIED,
    }
    assert list(Document.objects.values_list("doc_id", flat=True)) == ["user-alice/a"]
    # The system acts for no user: every change applies, and the journal names no user.
    again = batch_apply(actor=SEED, collection_id=collection.pk, feed=feed, origin="seed")
    assert not again.rejected
    assert set(Document.objects.values_list("doc_id", flat=True)) == {"user-alice/a", "user-bob/b"}


@pytest.mark.django_db
def test_a_token_without_write_limits_its_user_in_the_service(
    collection: Any, member: Any, own_keys: None
) -> None:
    alice = member("alice", "writer")
    change = {"_revision": 1, "_modified": 1_700_000_000_000}
    feed = {"changeSet": [{"_id": "user-alice/a", **change}, {"_id": "user-bob/b", **change}]}
    read_only = Bearer(user=alice, scopes=frozenset({"read"}))
    result = batch_apply(actor=read_only, collection_id=collection.pk, feed=feed, origin="phone")
    assert result.added == []
    assert {r.doc_id: r.error.error for r in result.rejected} == {
        "user-alice/a": ErrorCode.TOKEN_SCOPE,
        "user-bob/b": ErrorCode.TOKEN_SCOPE,
    }
    assert not Document.objects.exists()
    # With `write`, the token adds nothing to the user: the key rules still decide.
    writing = Bearer(user=alice, scopes=frozenset({"read", "write"}))
    result = batch_apply(actor=writing, collection_id=collection.pk, feed=feed, origin="phone")
    assert result.added == ["user-alice/a"]
    assert {r.doc_id: r.error.error for r in result.rejected} == {
        "user-bob/b": ErrorCode.KEY_WRITE_DENIED
    }
    entry = JournalEntry.objects.get()
    assert entry.user_id == alice.pk
    assert (
        refused(
            document_put,
            actor=read_only,
            collection_id=collection.pk,
            doc_id="user-alice/b",
            body={},
            origin="t",
        )
        is ErrorCode.TOKEN_SCOPE
    )


@pytest.mark.django_db
def test_an_import_needs_the_system_or_a_collection_administrator(
    collection: Any, member: Any
) -> None:
    import io

    from replication.transfer import collection_export, collection_import

    document_put(actor=SEED, collection_id=collection.pk, doc_id="a", body={"v": 1}, origin="s")
    exported = io.StringIO()
    collection_export(collection_id=collection.pk, out=exported)
    kwargs = {"tenant": collection.tenant, "name": "notes"}
    with pytest.raises(DataGateError) as refused:
        collection_import(
            actor=member("walt", "writer"), source=io.StringIO(exported.getvalue()), **kwargs
        )
    assert refused.value.error is ErrorCode.READ_ONLY
    with pytest.raises(TypeError):
        collection_import(source=io.StringIO(exported.getvalue()), **kwargs)
    report = collection_import(
        actor=member("ada", "admin"), source=io.StringIO(exported.getvalue()), **kwargs
    )
    assert report is not None
    assert list(Document.objects.values_list("doc_id", flat=True)) == ["a"]
