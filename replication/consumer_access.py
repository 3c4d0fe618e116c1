"""The event-loop half of a session's access: the consumer's side of re-checks and refresh.

The database half (what a re-check decides, the sweep's queries and what they cost) is
`replication.services.sessions`; this module runs it from the event loop. One `AccessSweep` per
process (per event loop, like the live hub) re-checks every session it serves every
`DATAGATE SESSION_RECHECK_INTERVAL` seconds; each consumer's `SessionAccess` holds its token,
applies the sweep's updates to its grant and handles a token refresh.

A baseline must be a counter value read *before* the decision was made, or a change made in
between would be missed: the consumer takes `access_baseline()` before it calls `session_open`,
and a token refresh takes one before its re-check. A session without one (the first sessions of
a process, before its first read of the counter) gets a new decision at the first sweep if any of
its scopes ever changed.

The sweep does not change sessions itself: it hands each update to the session's `watch()`
task, which applies it under the session's lock unless a token refresh changed the session in
the meantime (then the next sweep looks again). A failed sweep (the database away, say) is tried
again next interval; the sessions keep the access they had, which was right a moment ago.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.access_changes import access_version
from core.errors import DataGateError, ErrorCode
from replication.protocol import machine as mc
from replication.services.sessions import (
    AccessUpdate,
    SweepItem,
    sweep_read,
    sweep_recheck,
    token_check,
)

logger = logging.getLogger(__name__)

# Distinct (user, tenant, collection) decisions per database step when a sweep re-decides.
RECHECK_BATCH = 50


# --- the sweep: the event-loop side -------------------------------------------------------


class AccessSweep:
    """One per event loop (= per daphne process): re-checks every session it serves."""

    def __init__(self) -> None:
        self.sessions: set[SessionAccess] = set()
        # The counter value of the latest completed read: a baseline for decisions made later.
        self.version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._priming: asyncio.Task[None] | None = None

    def baseline(self) -> int | None:
        """A counter value read before now (None: not read yet; the first call reads it)."""
        if self.version is None and (self._priming is None or self._priming.done()):
            self._priming = asyncio.get_running_loop().create_task(self._prime())
        return self.version

    async def _prime(self) -> None:
        try:
            version = await database_sync_to_async(access_version)()
        except Exception:
            logger.warning("could not read the access marker", exc_info=True)
            return
        if self.version is None:
            self.version = version

    def add(self, session: SessionAccess) -> None:
        self.sessions.add(session)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="session-access-sweep"
            )

    def discard(self, session: SessionAccess) -> None:
        self.sessions.discard(session)

    async def _run(self) -> None:
        while self.sessions:
            await asyncio.sleep(float(settings.DATAGATE["SESSION_RECHECK_INTERVAL"]))
            try:
                await self.sweep()
            except Exception:
                logger.exception("session access sweep failed")

    async def sweep(self) -> None:
        """Re-check every session once (see the module docstring for what it costs)."""
        sessions: list[SessionAccess] = []
        items: list[SweepItem] = []
        for session in list(self.sessions):
            item = session.sweep_item()
            if item is not None:
                sessions.append(session)
                items.append(item)
        if not items:
            return
        found = await database_sync_to_async(sweep_read)(items=items)
        self.version = found.version
        decide: dict[tuple[int, int, str], list[int]] = {}
        for n, item in enumerate(items):
            reason = found.token_errors.get(item.token_id) if item.token_id is not None else None
            if reason is not None:
                error = DataGateError(ErrorCode.TOKEN_INVALID, fatal=True, reason=reason)
                sessions[n].deliver(AccessUpdate(error=error), item=item, version=found.version)
            elif n in found.stale:
                decide.setdefault(item.decision_key, []).append(n)
            else:
                sessions[n].confirm(item=item, version=found.version)
        groups = list(decide.values())
        for start in range(0, len(groups), RECHECK_BATCH):
            batch = [n for group in groups[start : start + RECHECK_BATCH] for n in group]
            updates = await database_sync_to_async(sweep_recheck)(items=[items[n] for n in batch])
            for n, update in zip(batch, updates, strict=True):
                sessions[n].deliver(update, item=items[n], version=found.version)


_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AccessSweep] = (
    weakref.WeakKeyDictionary()
)


def get_sweep() -> AccessSweep:
    """This event loop's sweep (one per daphne process; one per test event loop)."""
    loop = asyncio.get_running_loop()
    sweep = _sweeps.get(loop)
    if sweep is None:
        sweep = _sweeps[loop] = AccessSweep()
    return sweep


def access_baseline() -> int | None:
    """Call before deciding a session's access (`session_open`); give the result to its
    `SessionAccess`. The module docstring says why."""
    return get_sweep().baseline()


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


# --- the session's side -------------------------------------------------------------------


class SessionAccess:
    """The consumer's side: holds the session's token and applies updates to its grant."""

    def __init__(
        self, consumer: Any, *, scopes: frozenset[str], baseline: int | None = None
    ) -> None:
        self.consumer = consumer
        self.scopes = scopes
        self.lock = asyncio.Lock()  # a sweep's update and a refresh never interleave
        self.baseline = baseline  # the access marker's counter before the current decision
        self.generation = 0  # moves on every change of the session's access
        self._pending: tuple[AccessUpdate, SweepItem, int] | None = None
        self._wake = asyncio.Event()

    async def watch(self) -> None:
        """Apply the sweep's updates until the session closes."""
        sweep = get_sweep()
        sweep.add(self)
        try:
            while not self.consumer.closed:
                await self._wake.wait()
                self._wake.clear()
                pending, self._pending = self._pending, None
                if pending is None:
                    continue
                effects = await self._take(*pending)
                if effects:
                    await self.consumer.run(effects)
        finally:
            sweep.discard(self)

    # What the sweep calls (in the event loop).

    def sweep_item(self) -> SweepItem | None:
        grant = self.consumer.grant
        if self.consumer.closed or grant is None:
            return None
        return SweepItem(
            grant=grant,
            collection_name=self.consumer.collection_name,
            token_id=grant.token_id,
            scopes=self.scopes,
            baseline=self.baseline,
            generation=self.generation,
        )

    def confirm(self, *, item: SweepItem, version: int) -> None:
        """The sweep found nothing that changes this session's access up to `version`."""
        if item.generation == self.generation and not self.lock.locked():
            self.baseline = version

    def deliver(self, update: AccessUpdate, *, item: SweepItem, version: int) -> None:
        self._pending = (update, item, version)
        self._wake.set()

    async def _take(self, update: AccessUpdate, item: SweepItem, version: int) -> list[mc.Effect]:
        async with self.lock:
            if self.consumer.closed or self.consumer.grant is None:
                return []
            if item.generation != self.generation:
                return []  # a refresh changed the session since: the next sweep looks again
            effects = self._apply(update)
            if update.policy is not None:
                self.baseline = version
            return effects

    # A token refresh (the consumer calls it).

    async def refresh(self, effect: mc.RefreshToken) -> list[mc.Effect]:
        consumer = self.consumer
        async with self.lock:
            grant = consumer.grant
            if consumer.closed or grant is None:
                return []
            baseline = access_baseline()
            update = await database_sync_to_async(token_check)(
                grant=grant, raw_token=effect.token, collection_name=consumer.collection_name
            )
            if update.error is not None and not update.error.fatal:
                return [mc.ReportError(update.error)]
            self.scopes = frozenset(update.scopes) or self.scopes
            effects = self._apply(update)
            if update.policy is not None:
                self.baseline = _later(self.baseline, baseline)
            if update.error is not None:
                return effects
            return effects + consumer.session.token_refreshed(
                expires_ms=update.expires_ms,
                scopes=update.scopes,
                read_only=not update.may_push,
                correlation_id=effect.message_id,
            )

    def _apply(self, update: AccessUpdate) -> list[mc.Effect]:
        consumer = self.consumer
        grant = consumer.grant
        session = consumer.session
        effects: list[mc.Effect] = []
        self.generation += 1
        if update.policy is not None:
            grant.policy = update.policy
            grant.read_filter = update.policy.read_filter
            grant.may_push = update.may_push
            grant.scopes = frozenset(update.scopes)
            grant.token_id = update.token_id
            if update.user is not None:
                grant.user = update.user
            session.read_only = not update.may_push
        if update.removals:
            now = consumer.loop.time()
            size = int(settings.DATAGATE["CHUNK_SIZE"])
            items = sorted(update.removals.items())
            for start in range(0, len(items), size):
                chunk = dict(items[start : start + size])
                effects += session.removals(tombstones=chunk, now=now)
        if update.error is not None:
            effects += session.fail(update.error)
        return effects
