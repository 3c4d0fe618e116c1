"""A changed view re-syncs its replicas by difference (docs/protocol.md section 12.1,
docs/decisions/0016): a replica synced through the old definition up to its marker receives
the documents the new definition adds and removals for those it drops, then every later change
through the new definition, and ends holding exactly the new view, without a re-pull of the
documents both definitions select."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.access import System
from replication import data_views
from replication.models import DataView, Document
from replication.protocol import mango
from replication.selectors import change_page
from tests.support.mango_strategies import EXAMPLES, bodies, selectors

SYSTEM = System("test")


def _store(collection: Any, docs: list[dict[str, Any]]) -> None:
    Document.objects.filter(collection=collection).delete()
    Document.objects.bulk_create(
        Document(
            collection=collection, doc_id=f"d{i:02d}", body=body, revision=1, modified=i, seq=i + 1
        )
        for i, body in enumerate(docs)
    )
    collection.last_seq = len(docs)
    collection.save(update_fields=["last_seq"])


def _apply(held: dict[str, Any], feed: dict[str, Any]) -> None:
    for doc in feed["changeSet"]:
        held[doc["_id"]] = {k: v for k, v in doc.items() if not k.startswith("_")}
    for doc_id in feed["tombstoneMap"]:
        held.pop(doc_id, None)


def _difference(
    collection: Any, old: mango.Selector, new: mango.Selector, up_to_seq: int, limit: int
) -> list[dict[str, Any]]:
    """Every page of the difference, as the feeds a pull sends."""
    feeds, after, more = [], "", True
    while more:
        changes, after, more = data_views.view_difference_page(
            collection_id=collection.pk,
            old=old,
            new=new,
            up_to_seq=up_to_seq,
            after_id=after,
            limit=limit,
        )
        feeds.append(data_views.view_feed(changes, selector=new))
    return feeds


@pytest.mark.storage
@pytest.mark.django_db
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    docs=st.lists(bodies, min_size=1, max_size=14),
    old_raw=selectors,
    new_raw=selectors,
    marker=st.integers(0, 14),
    holds_later=st.lists(st.booleans(), min_size=14, max_size=14),
    limit=st.integers(1, 5),
)
def test_after_the_difference_a_replica_holds_exactly_the_new_view(
    docs: list[dict[str, Any]],
    old_raw: dict[str, Any],
    new_raw: dict[str, Any],
    marker: int,
    holds_later: list[bool],
    limit: int,
    collection: Any,
) -> None:
    docs = [json.loads(json.dumps(body)) for body in docs]
    old, new = mango.parse(old_raw), mango.parse(new_raw)
    marker = min(marker, len(docs))
    with transaction.atomic():
        _store(collection, docs)
        # What the server holds, as its database gives it back (PostgreSQL's jsonb reads a
        # large float back as an integer, say).
        docs = [
            body
            for _, body in sorted(
                Document.objects.filter(collection=collection).values_list("doc_id", "body")
            )
        ]
        # The replica synced the old definition up to `marker`: it holds those documents
        # (seq <= marker) the old selector matches. Of the later ones it may hold any (an
        # older version, or nothing): the pull after the difference sends each of them again.
        held: dict[str, Any] = {}
        for i, body in enumerate(docs):
            doc_id = f"d{i:02d}"
            if i + 1 <= marker and old.matches(body):
                held[doc_id] = body
            elif i + 1 > marker and holds_later[i]:
                held[doc_id] = {"stale": True}
        sent: list[str] = []
        for feed in _difference(collection, old, new, marker, limit):
            _apply(held, feed)
            sent += [d["_id"] for d in feed["changeSet"]] + list(feed["tombstoneMap"])
        after = marker
        while after < len(docs):
            page = change_page(collection_id=collection.pk, after_seq=after, limit=limit)
            _apply(held, data_views.view_feed(page.changes, selector=new))
            after = page.covered
    assert held == {f"d{i:02d}": body for i, body in enumerate(docs) if new.matches(body)}
    # The difference named only documents whose membership changed, each once.
    changed = {
        f"d{i:02d}"
        for i, body in enumerate(docs)
        if i + 1 <= marker and old.matches(body) != new.matches(body)
    }
    assert sorted(sent) == sorted(changed)


@pytest.mark.django_db
def test_a_changed_definition_keeps_the_old_one_and_a_session_can_name_it(
    collection: Any, make_user: Any
) -> None:
    view = data_views.view_create(
        actor=SYSTEM,
        tenant=collection.tenant,
        collection_name=collection.name,
        name="mine",
        selector={"owner": "{username}"},
    )
    user = make_user("rita")
    before = data_views.view_session_open(
        user=user, tenant=collection.tenant, collection_id=collection.pk, name="mine"
    )
    assert before.previous == {}
    view = data_views.view_update(
        actor=SYSTEM, view=view, selector={"owner": "{username}", "status": "open"}
    )
    data_views.view_update(
        actor=SYSTEM, view=view, selector={"owner": "{username}", "status": "open"}, description="x"
    )
    stored = DataView.objects.get(pk=view.pk)
    assert stored.version == 2  # a description alone is no new definition
    assert stored.history == [{"version": 1, "selector": {"owner": "{username}"}, "fields": []}]
    after = data_views.view_session_open(
        user=user, tenant=collection.tenant, collection_id=collection.pk, name="mine"
    )
    assert after.epoch != before.epoch
    assert set(after.previous) == {before.epoch}
    old = after.previous[before.epoch]  # bound for this user, like the session's selector
    assert old.matches({"owner": "rita"})
    assert not old.matches({"owner": "wendy"})


@pytest.mark.django_db
def test_only_the_last_definitions_are_kept(collection: Any) -> None:
    view = data_views.view_create(
        actor=SYSTEM,
        tenant=collection.tenant,
        collection_name=collection.name,
        name="n",
        selector={"n": 0},
    )
    for n in range(1, data_views.HISTORY_KEPT + 5):
        view = data_views.view_update(actor=SYSTEM, view=view, selector={"n": n})
    history = DataView.objects.get(pk=view.pk).history
    assert len(history) == data_views.HISTORY_KEPT
    assert history[-1]["version"] == view.version - 1
