"""The replica API: a local database of one collection that syncs with a DataGate server.

`AsyncReplica` is for asyncio code: the data methods (`put`, `get`, `delete`, `list`) are
plain calls on the local SQLite file and work offline; `sync()` runs one push and pull;
`start()` keeps a live session up in the background (reconnecting with back-off) until
`stop()`. `Replica` offers the same API to synchronous code by running an event loop in a
background thread.

Change callbacks receive a `Change` for every id that changed here, whether by a local call
(`source == "local"`, called in the caller's thread) or from the server (`"remote"`, called in
the thread running the sync loop). A callback that raises is logged and does not stop sync.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from datagate_replica.store import Change, Markers, RejectedChange, Store
from datagate_replica.sync import SessionReport, SyncEngine

log = logging.getLogger("datagate_replica")

ChangeCallback = Callable[[Change], Any]
T = TypeVar("T")


def default_path(tenant: str, collection: str, view: str | None = None) -> Path:
    if view:
        return Path(f"{tenant}-{collection}-{view}.replica.sqlite3")
    return Path(f"{tenant}-{collection}.replica.sqlite3")


class AsyncReplica:
    """A replica of `tenant/collection` on the server at `url`, kept in the file `path`."""

    def __init__(
        self,
        url: str,
        tenant: str,
        collection: str,
        token: str,
        *,
        path: str | Path | None = None,
        name: str | None = None,
        view: str | None = None,
        **engine_options: Any,
    ) -> None:
        self.store = Store(path if path is not None else default_path(tenant, collection, view))
        self.store.bind(tenant=tenant, collection=collection, view=view)
        self._callbacks: list[ChangeCallback] = []
        self._pending_callbacks: set[asyncio.Future[Any]] = set()
        self.engine = SyncEngine(
            store=self.store,
            url=url,
            tenant=tenant,
            collection=collection,
            token=token,
            name=name,
            view=view,
            on_changes=self._dispatch,
            **engine_options,
        )
        self._poke: Callable[[], None] = self.engine.poke
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    # -- data -------------------------------------------------------------------------------

    @property
    def replica_id(self) -> str:
        return self.store.replica_id

    def put(
        self, doc_id: str, fields: Mapping[str, Any] | None = None, **more: Any
    ) -> dict[str, Any]:
        """Write a document (its fields replace the old ones); returns it with its meta fields.

        Raises `DocumentTooLarge` (a `StoreError`) when the fields cannot fit in one frame of
        the server (`max_frame_bytes`, learned from the server's DG-2007 too)."""
        version = self.store.local_put(doc_id, {**(fields or {}), **more})
        self._after_local(Change(doc_id, "local", version))
        return version.to_document()

    def update(
        self, doc_id: str, fields: Mapping[str, Any] | None = None, **more: Any
    ) -> dict[str, Any]:
        """Merge fields into a document (creating it if needed)."""
        current = self.get(doc_id) or {}
        merged = {k: v for k, v in current.items() if not k.startswith("_")}
        merged.update({**(fields or {}), **more})
        return self.put(doc_id, merged)

    def get(self, doc_id: str) -> dict[str, Any] | None:
        return self.store.document(doc_id)

    def delete(self, doc_id: str) -> bool:
        """Delete a document; False if there was no such document."""
        version = self.store.local_delete(doc_id)
        if version is None:
            return False
        self._after_local(Change(doc_id, "local", version))
        return True

    def list(
        self, where: Mapping[str, Any] | None = None, *, limit: int | None = None, **equals: Any
    ) -> builtins.list[dict[str, Any]]:
        """Documents whose fields equal the given values (all documents without any)."""
        return self.store.documents({**(where or {}), **equals}, limit=limit)

    find = list

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(change)` for every change, local or remote; returns an unsubscribe."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def _after_local(self, change: Change) -> None:
        self._dispatch([change])
        self._poke()

    def _dispatch(self, changes: builtins.list[Change]) -> None:
        for change in changes:
            for callback in list(self._callbacks):
                try:
                    result = callback(change)
                    if inspect.isawaitable(result):
                        task = asyncio.ensure_future(result)
                        self._pending_callbacks.add(task)
                        task.add_done_callback(self._pending_callbacks.discard)
                except Exception:
                    log.exception("change callback %r failed", callback)

    # -- state ------------------------------------------------------------------------------

    @property
    def markers(self) -> Markers:
        return self.store.markers()

    def rejected(self) -> builtins.list[RejectedChange]:
        return self.store.rejected()

    def state(self) -> dict[str, Any]:
        return self.store.state()

    def state_hash(self) -> str:
        return self.store.state_hash()

    def status(self) -> dict[str, Any]:
        markers = self.store.markers()
        counts = self.store.count()
        return {
            "replica": self.store.replica_id,
            "binding": self.store.binding,
            "file": str(self.store.path),
            "server": self.engine.endpoint,
            "markers": markers.to_wire(),
            "documents": counts["documents"],
            "tombstones": counts["tombstones"],
            "journal": counts["journal"],
            "frame_limit": self.store.frame_limit(),
            "rejected": [
                {"id": r.version.doc_id, "code": r.code, "error": r.error}
                for r in self.store.rejected()
            ],
            "live": self.engine.live,
            **self.store.notes(),
        }

    # -- sync -------------------------------------------------------------------------------

    async def sync(self) -> SessionReport:
        """One push and pull (raises SyncError if the server cannot be reached).

        A live replica (`start()`) syncs on its own; calling this meanwhile is an error.
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError("this replica is live and syncs on its own; stop() it first")
        return await self.engine.sync_once()

    async def verify(self, *, repair: bool = False) -> SessionReport:
        """Prove by range checks that this replica holds what the server holds; with
        `repair`, repair what differs. `report.equal`, `report.differences`."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("this replica is live and syncs on its own; stop() it first")
        return await self.engine.verify(repair=repair)

    async def start(self) -> None:
        """Stay live in the background until `stop()`, reconnecting as needed."""
        if self._task is not None and not self._task.done():
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.engine.run(self._stop))

    async def wait_live(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - public API
        """Wait until the live session is up (pushed, pulled, feeding)."""
        if self._task is not None and self._task.done():
            self._task.result()
        await self.engine.wait_live(timeout)

    async def stop(self) -> None:
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        task, self._task = self._task, None
        try:
            await task
        except Exception as exc:  # the error is kept in engine.last_error and the store
            log.info("sync stopped after: %s", exc)

    async def close(self) -> None:
        await self.stop()
        self.store.close()

    async def __aenter__(self) -> AsyncReplica:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Replica:
    """`AsyncReplica` for synchronous code: the sync loop runs in a background thread."""

    def __init__(
        self,
        url: str,
        tenant: str,
        collection: str,
        token: str,
        *,
        path: str | Path | None = None,
        name: str | None = None,
        **engine_options: Any,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"datagate-replica-{collection}", daemon=True
        )
        self._thread.start()
        self._replica = AsyncReplica(
            url, tenant, collection, token, path=path, name=name, **engine_options
        )
        engine = self._replica.engine

        def poke() -> None:
            self._loop.call_soon_threadsafe(engine.poke)

        self._replica._poke = poke

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def replica_id(self) -> str:
        return self._replica.replica_id

    @property
    def store(self) -> Store:
        return self._replica.store

    @property
    def engine(self) -> SyncEngine:
        return self._replica.engine

    @property
    def markers(self) -> Markers:
        return self._replica.markers

    def put(
        self, doc_id: str, fields: Mapping[str, Any] | None = None, **more: Any
    ) -> dict[str, Any]:
        return self._replica.put(doc_id, fields, **more)

    def update(
        self, doc_id: str, fields: Mapping[str, Any] | None = None, **more: Any
    ) -> dict[str, Any]:
        return self._replica.update(doc_id, fields, **more)

    def get(self, doc_id: str) -> dict[str, Any] | None:
        return self._replica.get(doc_id)

    def delete(self, doc_id: str) -> bool:
        return self._replica.delete(doc_id)

    def list(
        self, where: Mapping[str, Any] | None = None, *, limit: int | None = None, **equals: Any
    ) -> builtins.list[dict[str, Any]]:
        return self._replica.list(where, limit=limit, **equals)

    find = list

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._replica.on_change(callback)

    def rejected(self) -> builtins.list[RejectedChange]:
        return self._replica.rejected()

    def state(self) -> dict[str, Any]:
        return self._replica.state()

    def state_hash(self) -> str:
        return self._replica.state_hash()

    def status(self) -> dict[str, Any]:
        return self._replica.status()

    def sync(self, timeout: float | None = None) -> SessionReport:
        return self._run(self._replica.sync(), timeout)

    def verify(self, *, repair: bool = False, timeout: float | None = None) -> SessionReport:
        return self._run(self._replica.verify(repair=repair), timeout)

    def start(self) -> None:
        self._run(self._replica.start())

    def wait_live(self, timeout: float = 30.0) -> None:
        self._run(self._replica.wait_live(timeout))

    def stop(self) -> None:
        self._run(self._replica.stop())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._replica.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
