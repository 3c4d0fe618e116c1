"""Topic storage: gap-free offsets under concurrent publishers, commits, retention.

Marked `storage`: runs on SQLite (writers serialised by BEGIN IMMEDIATE) and again on
PostgreSQL in `make test`'s second pass, where the topic's row lock (select_for_update) is
what keeps offsets gap-free and in commit order.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from core.errors import DataGateError
from topics.models import Message, Topic
from topics.selectors import committed_offset, messages_read, topic_find, topic_list
from topics.services import (
    Publication,
    messages_publish,
    offset_commit,
    topic_create,
    topic_trim,
)

pytestmark = [pytest.mark.storage, pytest.mark.django_db(transaction=True)]

PUBLISHERS = 4
PUBLISHES_EACH = 15
PER_PUBLISH = 5


def test_concurrent_publishers_get_gap_free_offsets_in_commit_order(tenant: Any) -> None:
    topic = topic_create(tenant=tenant, name="busy", scope="global", owner_id=None)
    errors: list[BaseException] = []
    done = threading.Event()
    seen: list[int] = []
    returned: dict[int, list[int]] = {}

    def publisher(n: int) -> None:
        mine: list[int] = []
        try:
            for p in range(PUBLISHES_EACH):
                batch = [Publication(f"p{n}-{p}-{i}", {"n": n}) for i in range(PER_PUBLISH)]
                mine += messages_publish(topic_id=topic.pk, messages=batch, publisher_id=None)
            returned[n] = mine
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def reader() -> None:
        # Pages by "after the last offset I saw": a gap would show as a skipped offset.
        position = 0
        try:
            while True:
                finished = done.is_set()
                found = messages_read(topic_id=topic.pk, from_offset=position + 1, limit=17)
                assert found is not None
                page, _ = found
                for message in page:
                    seen.append(message.offset)
                if page:
                    position = page[-1].offset
                elif finished:
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    reading = threading.Thread(target=reader)
    reading.start()
    publishing = [threading.Thread(target=publisher, args=(n,)) for n in range(PUBLISHERS)]
    for thread in publishing:
        thread.start()
    for thread in publishing:
        thread.join()
    done.set()
    reading.join(timeout=120)
    assert not errors, errors

    total = PUBLISHERS * PUBLISHES_EACH * PER_PUBLISH
    assert seen == list(range(1, total + 1)), "the reader saw a gap, a repeat or a reordering"
    for offsets in returned.values():
        assert offsets == sorted(offsets)
        assert len(offsets) == PUBLISHES_EACH * PER_PUBLISH
    assert sorted(o for offsets in returned.values() for o in offsets) == seen
    topic.refresh_from_db()
    assert topic.last_offset == total


def test_a_repeated_message_id_keeps_its_first_offset_and_payload(tenant: Any) -> None:
    topic = topic_create(tenant=tenant, name="once", scope="global", owner_id=None)
    first = messages_publish(
        topic_id=topic.pk,
        messages=[Publication("a", 1), Publication("a", 2), Publication("b", 3)],
        publisher_id=None,
    )
    again = messages_publish(topic_id=topic.pk, messages=[Publication("b", 99)], publisher_id=None)
    assert (first, again) == ([1, 1, 2], [2])
    assert list(Message.objects.order_by("offset").values_list("payload", flat=True)) == [1, 3]


def test_a_commit_never_moves_backwards(tenant: Any, make_user: Any) -> None:
    user = make_user("carol")
    topic = topic_create(tenant=tenant, name="c", scope="global", owner_id=None)
    messages_publish(
        topic_id=topic.pk, messages=[Publication(str(i), i) for i in range(9)], publisher_id=None
    )

    def commit(offset: int, device: str = "d") -> int:
        return offset_commit(
            topic_id=topic.pk, topic_name="c", user_id=user.pk, device=device, offset=offset
        )

    assert commit(5) == 5
    with pytest.raises(DataGateError) as regression:
        commit(4)
    assert regression.value.code == "DG-6007"
    with pytest.raises(DataGateError) as beyond:
        commit(10)
    assert beyond.value.code == "DG-6008"
    assert commit(5) == 5
    assert commit(1, device="other") == 1
    assert committed_offset(topic_id=topic.pk, user_id=user.pk, device="d") == 5
    assert committed_offset(topic_id=topic.pk, user_id=user.pk, device="other") == 1


def test_names_mean_one_topic_to_each_user(tenant: Any, make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    topic_create(tenant=tenant, name="inbox", scope="local", owner_id=alice.pk)
    topic_create(tenant=tenant, name="inbox", scope="local", owner_id=bob.pk)
    with pytest.raises(DataGateError) as exists:
        topic_create(tenant=tenant, name="inbox", scope="global", owner_id=alice.pk)
    assert exists.value.code == "DG-6003"
    topic_create(tenant=tenant, name="news", scope="global", owner_id=alice.pk)
    with pytest.raises(DataGateError):
        topic_create(tenant=tenant, name="news", scope="local", owner_id=bob.pk)
    mine = topic_find(tenant=tenant, user_id=bob.pk, name="inbox")
    assert mine is not None
    assert mine.owner_id == bob.pk
    assert [t.name for t in topic_list(tenant=tenant, user_id=bob.pk)] == ["inbox", "news"]


def test_trim_removes_by_age_and_by_count_and_dry_run_removes_nothing(tenant: Any) -> None:
    topic = topic_create(
        tenant=tenant,
        name="log",
        scope="global",
        owner_id=None,
        retention_days=7,
        retention_count=5,
    )
    old = timezone.now() - timedelta(days=10)
    messages_publish(
        topic_id=topic.pk,
        messages=[Publication(f"old{i}", i) for i in range(3)],
        publisher_id=None,
        at=old,
    )
    messages_publish(
        topic_id=topic.pk, messages=[Publication(f"new{i}", i) for i in range(8)], publisher_id=None
    )
    preview = topic_trim(topic_id=topic.pk, dry_run=True)
    assert (preview.by_age, preview.by_count) == (3, 3)
    assert Message.objects.count() == 11
    result = topic_trim(topic_id=topic.pk)
    assert result.removed == 6
    assert list(Message.objects.order_by("offset").values_list("offset", flat=True)) == [
        7,
        8,
        9,
        10,
        11,
    ]
    # Offsets never change: the next message continues the count.
    assert messages_publish(
        topic_id=topic.pk, messages=[Publication("next", 0)], publisher_id=None
    ) == [12]
    (info,) = topic_list(tenant=tenant, user_id=0)
    assert (info.message_count, info.first_offset, info.last_offset) == (6, 7, 12)


def test_the_trim_command_reports_and_honours_dry_run(tenant: Any) -> None:
    topic = topic_create(
        tenant=tenant, name="short", scope="global", owner_id=None, retention_count=2
    )
    messages_publish(
        topic_id=topic.pk, messages=[Publication(str(i), i) for i in range(5)], publisher_id=None
    )
    Topic.objects.create(tenant=tenant, name="forever")
    out = StringIO()
    call_command("datagate_topics_trim", "--dry-run", stdout=out)
    assert "acme/short: would remove 3 (0 by age, 3 by count)" in out.getvalue()
    assert Message.objects.count() == 5
    out = StringIO()
    call_command("datagate_topics_trim", stdout=out)
    assert "acme/short: removed 3 (0 by age, 3 by count)" in out.getvalue()
    assert Message.objects.count() == 2


@pytest.mark.parametrize("model", ["topic", "message", "consumeroffset"])
def test_the_admin_lists_topics_messages_and_offsets(
    admin_client: Any, tenant: Any, make_user: Any, model: str
) -> None:
    user = make_user("dora")
    topic = topic_create(tenant=tenant, name="audit", scope="global", owner_id=user.pk)
    messages_publish(topic_id=topic.pk, messages=[Publication("e1", {"x": 1})], publisher_id=None)
    offset_commit(topic_id=topic.pk, topic_name="audit", user_id=user.pk, device="pc", offset=1)
    response = admin_client.get(f"/admin/topics/{model}/")
    assert response.status_code == 200
    assert b"audit" in response.content
