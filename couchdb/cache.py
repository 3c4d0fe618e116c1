"""Process-local caches of facts that never change once written, so that a live PouchDB's
wake-up and its `_bulk_get` of what just changed need no database step.

- The CouchDB view of a document version (`History` keyed by collection, id, seq and the
  version's time; the time too in case a restore reuses seqs): it is fixed when the version
  is written (a closed branch always comes with a new seq, docs/decisions/0009).
- A leaf revision's document (keyed by collection, id and revision id): a revision's body
  and path never change.

Because the keys name immutable facts, an entry is right in every process and never needs
invalidating; a miss falls back to the database. Both are bounded LRUs.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from couchdb.revs import History

K = TypeVar("K")
V = TypeVar("V")

VIEW_ENTRIES = 50_000
DOC_ENTRIES = 20_000


class Lru(Generic[K, V]):
    """A bounded map, used from the event loop and from database threads.

    Writers take the lock (an insert and its evictions are one step). Readers do not: each
    OrderedDict call is atomic under the GIL, and the event loop's `_bulk_get` lookups waited
    on the lock while a database thread filled the cache from the next `_changes` page
    (py-spy: 6-8% of a PouchDB catch-up's server samples on that line).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            # Evicted by a writer in between: the value is still a valid answer.
            with contextlib.suppress(KeyError):
                self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# (collection id, doc id, seq, _modified or delete time) -> the view of that version
views: Lru[tuple[int, str, int, int], History] = Lru(VIEW_ENTRIES)
# (collection id, doc id, leaf rev) -> (path, deleted, body): the body's values, or the JSON
# text the database holds (a replicator's `_changes` page reads it so, for `_bulk_get`)
leaves: Lru[tuple[int, str, str], tuple[list[str], bool, dict[str, Any] | str | None]] = Lru(
    DOC_ENTRIES
)


def remember(collection_id: int, doc_id: str, stamp: int, view: History, body: Any) -> None:
    """The view of a version, its winning leaf (with `body`) and its closed leaves."""
    views.put((collection_id, doc_id, view.seq, stamp), view)
    leaves.put(
        (collection_id, doc_id, view.head),
        (view.path, view.deleted, None if view.deleted else body),
    )
    for branch in view.closed:
        leaves.put((collection_id, doc_id, branch[0]), (branch, True, None))
