"""GC racing writers: a stale replica re-pushing edits while deletes land and GC collects them.

GC takes the collection's row lock, like every writer, so a stale write is judged either
against the tombstone or against the purge horizon, never against nothing. Marked `storage`:
runs on SQLite (writers serialised by BEGIN IMMEDIATE) and on PostgreSQL (select_for_update).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection

from accounts.access import System
from replication.maintenance import DAY_MS, tombstones_collect
from replication.models import Collection, Document
from replication.services.engine import batch_apply, now_ms
from replication.verify import collection_verify

pytestmark = [pytest.mark.storage, pytest.mark.django_db(transaction=True)]

IDS = [f"d{n}" for n in range(120)]
OLD = now_ms() - 60 * DAY_MS
CHUNK = 10


def test_no_deleted_document_comes_back_while_gc_races_deletes_and_stale_edits(
    tenant: Any,
) -> None:
    collection = Collection.objects.create(tenant=tenant, name="race")
    batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        origin="seed",
        feed={"changeSet": [{"_id": i, "_revision": 1, "_modified": OLD} for i in IDS]},
    )
    errors: list[BaseException] = []
    deleting_done = threading.Event()
    refused: set[str] = set()

    def deleter() -> None:
        try:
            for start in range(0, len(IDS), CHUNK):
                batch = IDS[start : start + CHUNK]
                batch_apply(
                    actor=System("test"),
                    collection_id=collection.pk,
                    origin="deleter",
                    feed={"tombstoneMap": {i: OLD + 1000 for i in batch}},
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            deleting_done.set()
            connection.close()

    def stale_writer() -> None:
        """Edits made before the deletes, pushed again and again as a flaky replica would."""
        try:
            for round_no in range(4):
                for start in range(0, len(IDS), CHUNK):
                    change_set = [
                        {"_id": i, "_revision": 2, "_modified": OLD + 500, "r": round_no}
                        for i in IDS[start : start + CHUNK]
                    ]
                    result = batch_apply(
                        actor=System("test"),
                        collection_id=collection.pk,
                        origin="stale",
                        feed={"changeSet": change_set},
                    )
                    refused.update(r.doc_id for r in result.rejected if r.error.code == "DG-7001")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def collector() -> None:
        try:
            while True:
                finished = deleting_done.is_set()
                tombstones_collect(collection_id=collection.pk)
                if finished:
                    return
                # GC runs on an interval, not in a tight loop: back-to-back BEGIN IMMEDIATE
                # transactions would starve the other writers (SQLite's lock is not fair).
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=f) for f in (deleter, stale_writer, collector)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    # Once more, after everything: the last stale round may have come after the last GC.
    tombstones_collect(collection_id=collection.pk)
    assert not Document.objects.filter(collection=collection).exists()
    collection.refresh_from_db()
    assert collection.purge_seq <= collection.last_seq
    assert collection.purge_horizon_ms == OLD + 1000
    assert collection_verify(collection_id=collection.pk).ok
    # Every stale edit that reached a collected delete was refused, not stored.
    again = batch_apply(
        actor=System("test"),
        collection_id=collection.pk,
        origin="stale",
        feed={"changeSet": [{"_id": i, "_revision": 2, "_modified": OLD + 500} for i in IDS]},
    )
    assert {r.error.code for r in again.rejected} == {"DG-7001"}
    assert len(again.rejected) == len(IDS)
    assert refused <= set(IDS)
