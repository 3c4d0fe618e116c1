"""Concurrent writers and a paging reader: no reader ever misses or repeats a change.

A change's seq is drawn from the collection's counter inside the transaction that writes it,
under the collection's row lock, so commits happen in seq order. Marked `storage`: runs on
SQLite (writers serialised by BEGIN IMMEDIATE) and on PostgreSQL (select_for_update).
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest
from django.db import connection

from accounts.access import System
from replication.models import Collection, JournalEntry
from replication.selectors import changes_since, collection_state
from replication.services.engine import batch_apply

pytestmark = [pytest.mark.storage, pytest.mark.django_db(transaction=True)]

WRITERS = 4
CHUNKS_PER_WRITER = 15
CHUNK = 20
T0 = 1_700_000_000_000


def _read_pages(collection_id: int, done: Any, results: Any) -> None:
    """Page through the collection's changes until the writers are done and nothing is left."""
    seen_ids: list[str] = []
    seen_seqs: list[int] = []
    error: str | None = None
    marker = 0
    try:
        while True:
            finished = done.is_set()
            page = changes_since(collection_id=collection_id, after_seq=marker, limit=37)
            for change in page:
                seen_ids.append(change.doc_id)
                seen_seqs.append(change.seq)
            if page:
                marker = page[-1].seq
            elif finished:
                break
    except BaseException as exc:
        error = repr(exc)
    finally:
        connection.close()
    results.put((seen_ids, seen_seqs, error))


def test_a_paging_reader_never_misses_or_repeats_a_change_under_concurrent_writers(
    tenant: Any,
) -> None:
    collection = Collection.objects.create(tenant=tenant, name="busy")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for c in range(CHUNKS_PER_WRITER):
                change_set = [
                    {"_id": f"w{n}-c{c}-{i}", "_revision": 1, "_modified": T0 + c, "n": n}
                    for i in range(CHUNK)
                ]
                # One shared id that every writer races on, to exercise the conflict path.
                change_set.append(
                    {"_id": "shared", "_revision": c + 1, "_modified": T0 + c, "_origin": f"w{n}"}
                )
                batch_apply(
                    actor=System("test"),
                    collection_id=collection.pk,
                    origin=f"w{n}",
                    feed={"changeSet": change_set},
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    # The reader runs in a process of its own. As a thread it could keep the GIL from the
    # writer that holds SQLite's write lock (the sqlite3 module lets go of the GIL on every
    # step, and a busy reader thread takes it back first), so the other writers' BEGIN IMMEDIATE
    # timed out on a loaded machine: a starvation of this test's making, not the storage's.
    # Readers of a real server are other processes or the event loop, which awaits the database.
    context = multiprocessing.get_context("fork")
    done = context.Event()
    results = context.Queue()
    connection.close()  # the child opens its own connection
    reading = context.Process(target=_read_pages, args=(collection.pk, done, results))
    reading.start()
    writing = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in writing:
        thread.start()
    for thread in writing:
        thread.join()
    done.set()
    seen_ids, seen_seqs, reader_error = results.get(timeout=120)
    reading.join(timeout=30)
    assert reader_error is None, reader_error
    assert not errors, errors

    assert seen_seqs == sorted(set(seen_seqs)), "a seq was seen twice or out of order"
    unique_ids = {i for i in seen_ids if i != "shared"}
    assert len(unique_ids) == WRITERS * CHUNKS_PER_WRITER * CHUNK, "the reader missed a change"
    assert len([i for i in seen_ids if i != "shared"]) == len(unique_ids)
    state = collection_state(collection_id=collection.pk)
    assert set(state["documents"]) == unique_ids | {"shared"}
    collection.refresh_from_db()
    journal = list(JournalEntry.objects.filter(collection=collection).values_list("seq", flat=True))
    assert sorted(journal) == list(range(1, collection.last_seq + 1))
