"""Sessions that outlive a token: token refresh and the periodic access sweep.

A replication session is authorised once at Connect (`services.session_open`). This module
keeps that decision true for as long as the session lives (docs/protocol.md sections 8 and 9,
"Token refresh" and "Access during a session"):

- `no2.sync.token.refresh` hands the session a fresh token for the same user. A good one is
  acknowledged (`no2.sync.token.refresh.ack`) and the session goes on with it; a bad one gets
  DG-1004 (non-fatal) and the session keeps its current token.
- Every `DATAGATE SESSION_RECHECK_INTERVAL` seconds the process's `AccessSweep` re-checks every
  session it serves, through `accounts.tokens` and `accounts.access` (the one chokepoint): its
  token (expired, revoked or refreshed away, or its user deactivated: DG-1001, close 4401), its
  right to read the collection (withdrawn: DG-3005, close 4403) and what it may read, write and
  push. Documents the replica may no longer read are sent to a live replica as removals (a feed
  of tombstones) before anything else, so they leave the device; the new read filter applies to
  every later feed.

Each tombstone carries the document's own `_modified` as its delete time: a delete ranks above
a write at the same millisecond, so the replica drops its copy, and a later change of the
document on the server (a newer stamp) still wins if access is given back.

Cost. One sweep per process (per event loop, like the live hub), in one database step when
nothing changed, however many sessions there are:

1. one query per `accounts.access_changes.batch_size()` distinct tokens (5,000 on PostgreSQL,
   989 on SQLite): which are revoked, expired or belong to a deactivated user;
2. one query for the access marker's counter (accounts/access_changes.py). Each session keeps
   the counter value its decision was made after (its *baseline*); when every baseline equals
   the counter, nothing any session depends on has changed and the sweep is done.

Otherwise one more query finds which of the sessions' scopes (the user, the collection, the
tenant, everyone) moved after their baselines. Sessions untouched by the change take the new
counter value as their baseline; the others get a new decision, one `document_policy` (about
five queries) per distinct (user, tenant, collection), in database steps of `RECHECK_BATCH`
decisions so that the other sessions' database steps are not held up behind a long sweep.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings

from core.errors import DataGateError, ErrorCode
from replication import selectors
from replication.protocol import machine as mc

if TYPE_CHECKING:
    from replication.services import SessionGrant

logger = logging.getLogger(__name__)

# Distinct (user, tenant, collection) decisions per database step when a sweep re-decides.
RECHECK_BATCH = 50


@dataclass
class AccessUpdate:
    """What a re-check or a token refresh found, applied to the session in the event loop."""

    error: DataGateError | None = None
    policy: Any = None
    may_push: bool = False
    write_scope: bool = False
    token_id: int | None = None
    removals: dict[str, int] = field(default_factory=dict)
    expires_ms: int = 0
    scopes: list[str] = field(default_factory=list)
    user: Any = None  # the user as the decision saw them (None: keep the grant's)


RemovalsMemo = dict[tuple[int, Any, Any], dict[str, int]]


def _removals(*, grant: SessionGrant, old_filter: Any, new_filter: Any) -> dict[str, int]:
    """Documents readable through `old_filter` and not through `new_filter` (None: all)."""
    removed: dict[str, int] = {}
    for doc_id, modified in selectors.document_stamps(collection_id=grant.collection_id):
        was_readable = old_filter is None or old_filter(doc_id)
        if was_readable and new_filter is not None and not new_filter(doc_id):
            removed[doc_id] = modified
    return removed


def access_update(
    *,
    grant: SessionGrant,
    collection_name: str,
    policy: Any,
    token_id: int | None,
    scopes: frozenset[str],
    memo: RemovalsMemo | None = None,
) -> AccessUpdate:
    """The session's update for a freshly decided `policy` (synchronous: reads documents when
    the readable set changed). `memo` shares removals between sessions of one collection whose
    readable sets changed alike."""
    update = AccessUpdate(
        policy=policy,
        write_scope="write" in scopes,
        may_push="write" in scopes and policy.can_write,
        token_id=token_id,
        scopes=sorted(scopes),
    )
    old = grant.policy.read_signature if grant.policy is not None else None
    if grant.read_filter is None and old is None:
        old = (True, None)
    if policy.read_signature != old:
        key = (grant.collection_id, old, policy.read_signature)
        removals = memo.get(key) if memo is not None and old is not None else None
        if removals is None:
            removals = _removals(
                grant=grant, old_filter=grant.read_filter, new_filter=policy.read_filter
            )
            if memo is not None and old is not None:
                memo[key] = removals
        update.removals = dict(removals)
    if not policy.can_read:
        update.error = DataGateError(
            ErrorCode.ACCESS_WITHDRAWN,
            fatal=True,
            tenant=grant.tenant.slug,
            collection=collection_name,
        )
    return update


def access_recheck(
    *, grant: SessionGrant, collection_name: str, token_id: int | None, scopes: frozenset[str]
) -> AccessUpdate:
    """Re-decide one session's access (synchronous: run it with database_sync_to_async)."""
    from accounts import access
    from accounts.tokens import token_still_valid

    if token_id is not None:
        reason = token_still_valid(token_id=token_id)
        if reason is not None:
            error = DataGateError(ErrorCode.TOKEN_INVALID, fatal=True, reason=reason)
            return AccessUpdate(error=error)
    policy = access.document_policy(
        user=grant.user, tenant=grant.tenant, collection_name=collection_name
    )
    return access_update(
        grant=grant,
        collection_name=collection_name,
        policy=policy,
        token_id=token_id,
        scopes=scopes,
    )


def token_check(*, grant: SessionGrant, raw_token: str, collection_name: str) -> AccessUpdate:
    """Check a fresh token for the session, then re-check access with its scopes."""
    from accounts.tokens import TokenRejected, token_authenticate

    try:
        info = token_authenticate(raw_token)
    except TokenRejected as rejected:
        return AccessUpdate(
            error=DataGateError(ErrorCode.TOKEN_REFRESH_REFUSED, reason=rejected.reason)
        )
    if info.user.pk != grant.user.pk:
        reason = "the token belongs to another user"
        return AccessUpdate(error=DataGateError(ErrorCode.TOKEN_REFRESH_REFUSED, reason=reason))
    if "read" not in info.scopes:
        reason = "the token lacks scope 'read'"
        return AccessUpdate(error=DataGateError(ErrorCode.TOKEN_REFRESH_REFUSED, reason=reason))
    update = access_recheck(
        grant=grant, collection_name=collection_name, token_id=info.token_id, scopes=info.scopes
    )
    update.expires_ms = int(info.expires.timestamp() * 1000)
    return update


# --- the sweep: the database side ---------------------------------------------------------


@dataclass(frozen=True)
class SweepItem:
    """One session as a sweep sees it, taken in the event loop."""

    grant: SessionGrant
    collection_name: str
    token_id: int | None
    scopes: frozenset[str]
    baseline: int | None
    generation: int = 0

    @property
    def decision_key(self) -> tuple[int, int, str]:
        return (self.grant.user.pk, self.grant.tenant.pk, self.collection_name)

    @property
    def marker_scopes(self) -> tuple[str, ...]:
        from accounts.access_changes import session_scopes

        return session_scopes(
            user_id=self.grant.user.pk,
            tenant_id=self.grant.tenant.pk,
            collection_name=self.collection_name,
        )


@dataclass
class SweepFound:
    """What a sweep's first database step found."""

    version: int  # the access marker's counter
    token_errors: dict[int, str]  # token id -> why it is no longer valid
    stale: set[int]  # indexes of the items that need a new decision


def sweep_read(*, items: Sequence[SweepItem]) -> SweepFound:
    """A sweep's first database step: the tokens, the counter and, only when the counter moved
    past some baseline, which sessions' scopes moved (synchronous)."""
    from accounts.access_changes import access_version, access_versions
    from accounts.tokens import tokens_still_valid

    token_errors = tokens_still_valid(
        token_ids=[item.token_id for item in items if item.token_id is not None]
    )
    version = access_version()
    behind = [n for n, item in enumerate(items) if _base(item) < version]
    stale = {n for n, item in enumerate(items) if _base(item) > version}  # the counter went back
    if behind:
        changed = access_versions(
            scopes={scope for n in behind for scope in items[n].marker_scopes},
            after=min(_base(items[n]) for n in behind),
        )
        for n in behind:
            base = _base(items[n])
            if any(changed.get(scope, -1) > base for scope in items[n].marker_scopes):
                stale.add(n)
    return SweepFound(version=version, token_errors=token_errors, stale=stale)


def _base(item: SweepItem) -> int:
    return -1 if item.baseline is None else item.baseline


def sweep_recheck(*, items: Sequence[SweepItem]) -> list[AccessUpdate]:
    """New decisions for `items`: one `document_policy` per distinct (user, tenant,
    collection), with the users as they are now (synchronous)."""
    from django.contrib.auth import get_user_model

    from accounts import access

    users = {
        user.pk: user
        for user in get_user_model()._default_manager.filter(
            pk__in={item.grant.user.pk for item in items}
        )
    }
    policies: dict[tuple[int, int, str], Any] = {}
    memo: RemovalsMemo = {}
    updates = []
    for item in items:
        user = users.get(item.grant.user.pk)  # None: deleted, may do nothing
        key = item.decision_key
        if key not in policies:
            policies[key] = access.document_policy(
                user=user, tenant=item.grant.tenant, collection_name=item.collection_name
            )
        update = access_update(
            grant=item.grant,
            collection_name=item.collection_name,
            policy=policies[key],
            token_id=item.token_id,
            scopes=item.scopes,
            memo=memo,
        )
        update.user = user
        updates.append(update)
    return updates


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
        from accounts.access_changes import access_version

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
            grant.write_scope = update.write_scope
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
