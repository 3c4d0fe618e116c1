"""Sessions that outlive a token: token refresh and the periodic access re-check.

A replication session is authorised once at Connect (`services.session_open`). This module
keeps that decision true for as long as the session lives (docs/protocol.md sections 8 and 9,
"Token refresh" and "Access during a session"):

- `no2.sync.token.refresh` hands the session a fresh token for the same user. A good one is
  acknowledged (`no2.sync.token.refresh.ack`) and the session goes on with it; a bad one gets
  DG-1004 (non-fatal) and the session keeps its current token.
- Every `DATAGATE SESSION_RECHECK_INTERVAL` seconds the session re-checks, through
  `accounts.tokens` and `accounts.access` (the one chokepoint): its token (expired, revoked or
  refreshed away: DG-1001, close 4401), its right to read the collection (withdrawn: DG-3005,
  close 4403) and what it may read, write and push. Documents the replica may no longer read
  are sent to a live replica as removals (a feed of tombstones) before anything else, so they
  leave the device; the new read filter applies to every later feed.

Each tombstone carries the document's own `_modified` as its delete time: a delete ranks above
a write at the same millisecond, so the replica drops its copy, and a later change of the
document on the server (a newer stamp) still wins if access is given back.

Cost: a re-check is about five small queries per session; the interval knob trades that load
against how fast a withdrawal takes effect.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings

from replication import selectors
from replication.protocol import machine as mc
from replication.protocol.errors import DataGateError, ErrorCode

if TYPE_CHECKING:
    from replication.services import SessionGrant

logger = logging.getLogger(__name__)


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


def _removals(*, grant: SessionGrant, old_filter: Any, new_filter: Any) -> dict[str, int]:
    """Documents readable through `old_filter` and not through `new_filter` (None: all)."""
    removed: dict[str, int] = {}
    for doc_id, modified in selectors.document_stamps(collection_id=grant.collection_id):
        was_readable = old_filter is None or old_filter(doc_id)
        if was_readable and new_filter is not None and not new_filter(doc_id):
            removed[doc_id] = modified
    return removed


def access_recheck(
    *, grant: SessionGrant, collection_name: str, token_id: int | None, scopes: frozenset[str]
) -> AccessUpdate:
    """Re-decide the session's access (synchronous: run it with database_sync_to_async)."""
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
        update.removals = _removals(
            grant=grant, old_filter=grant.read_filter, new_filter=policy.read_filter
        )
    if not policy.can_read:
        update.error = DataGateError(
            ErrorCode.ACCESS_WITHDRAWN,
            fatal=True,
            tenant=grant.tenant.slug,
            collection=collection_name,
        )
    return update


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


class SessionAccess:
    """The consumer's side: holds the session's token and applies updates to its grant."""

    def __init__(self, consumer: Any, *, scopes: frozenset[str]) -> None:
        self.consumer = consumer
        self.scopes = scopes
        self.lock = asyncio.Lock()  # a re-check and a refresh never interleave

    async def watch(self) -> None:
        """Re-check every SESSION_RECHECK_INTERVAL seconds until the session closes."""
        interval = float(settings.DATAGATE["SESSION_RECHECK_INTERVAL"])
        while not self.consumer.closed:
            await asyncio.sleep(interval)
            try:
                effects = await self.recheck()
            except Exception:
                # A failed re-check (the database away, say) is tried again next interval;
                # the session keeps the access it had, which was right a moment ago.
                logger.exception("session access re-check failed")
                continue
            await self.consumer.run(effects)

    async def recheck(self) -> list[mc.Effect]:
        consumer = self.consumer
        async with self.lock:
            grant = consumer.grant
            if consumer.closed or grant is None:
                return []
            update = await database_sync_to_async(access_recheck)(
                grant=grant,
                collection_name=consumer.collection_name,
                token_id=grant.token_id,
                scopes=self.scopes,
            )
            return self._apply(update)

    async def refresh(self, effect: mc.RefreshToken) -> list[mc.Effect]:
        consumer = self.consumer
        async with self.lock:
            grant = consumer.grant
            if consumer.closed or grant is None:
                return []
            update = await database_sync_to_async(token_check)(
                grant=grant, raw_token=effect.token, collection_name=consumer.collection_name
            )
            if update.error is not None and not update.error.fatal:
                return [mc.ReportError(update.error)]
            self.scopes = frozenset(update.scopes) or self.scopes
            effects = self._apply(update)
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
        if update.policy is not None:
            grant.policy = update.policy
            grant.read_filter = update.policy.read_filter
            grant.may_push = update.may_push
            grant.write_scope = update.write_scope
            grant.token_id = update.token_id
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
