"""Replication sessions in the database: the Connect decision, the session's pushes, and the
re-checks that keep the Connect decision true while the session lives.

A session is authorised once at Connect (`session_open`): the token, its scopes (through
`accounts.access.access_scope`), the user's right to read the collection, what they may write
and read (`accounts.access.document_policy`). Its pushes are applied by `session_chunks_apply`
through the write engine with the user through the token as actor (`accounts.access.Bearer`:
the token's `write` scope, then the user's right, per change). The rest of this module keeps
that decision true for as long as the session lives (docs/protocol.md sections 8 and 9, "Token
refresh" and "Access during a session"):

- `no2.sync.token.refresh` hands the session a fresh token for the same user (`token_check`). A
  good one is acknowledged (`no2.sync.token.refresh.ack`) and the session goes on with it; a bad
  one gets DG-1004 (non-fatal) and the session keeps its current token.
- Every `DATAGATE SESSION_RECHECK_INTERVAL` seconds the process's access sweep
  (replication/consumer_access.py, the event-loop half) re-checks every session it serves,
  through `accounts.tokens` and `accounts.access` (the one chokepoint): its token (expired,
  revoked or refreshed away, or its user deactivated: DG-1001, close 4401), its right to read
  the collection (withdrawn: DG-3005, close 4403) and what it may read, write and push.
  Documents the replica may no longer read are sent to a live replica as removals (a feed of
  tombstones) before anything else, so they leave the device; the new read filter applies to
  every later feed.

Each tombstone carries the document's own `_modified` as its delete time: a delete ranks above
a write at the same millisecond, so the replica drops its copy, and a later change of the
document on the server (a newer stamp) still wins if access is given back.

Cost. One sweep per process (per event loop, like the live hub), in one database step when
nothing changed, however many sessions there are (`sweep_read`):

1. one query per `accounts.access_changes.batch_size()` distinct tokens (5,000 on PostgreSQL,
   989 on SQLite): which are revoked, expired or belong to a deactivated user;
2. one query for the access marker's counter (accounts/access_changes.py). Each session keeps
   the counter value its decision was made after (its *baseline*); when every baseline equals
   the counter, nothing any session depends on has changed and the sweep is done.

Otherwise one more query finds which of the sessions' scopes (the user, the collection, the
tenant, everyone) moved after their baselines. Sessions untouched by the change take the new
counter value as their baseline; the others get a new decision (`sweep_recheck`), one
`document_policy` (one query) per distinct (user, tenant, collection), in database
steps of `consumer_access.RECHECK_BATCH` decisions so that the other sessions' database steps
are not held up behind a long sweep.

Everything here is synchronous: the consumer runs it with `database_sync_to_async`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from accounts import access
from accounts.access_changes import access_version, access_versions, session_scopes
from accounts.models import Tenant
from accounts.tokens import (
    TokenRejected,
    token_authenticate,
    token_still_valid,
    tokens_still_valid,
)
from core.errors import DataGateError, ErrorCode
from replication import selectors
from replication.changes import Rejection
from replication.rows import collection_and_tenant
from replication.services.engine import (
    ApplyResult,
    batch_apply_many,
    collection_get_or_create,
)
from replication.services.events import error_event_record
from replication.services.replicas import replica_connected, replica_pushed


@dataclass
class SessionGrant:
    """Who a session is and what it may do, decided once at Connect."""

    user: Any
    user_name: str
    tenant: Tenant
    collection_id: int
    replica_pk: int
    may_push: bool
    scopes: frozenset[str]  # the token's (a refresh replaces them); pushes need `write`
    last_seq: int
    epoch: int
    read_filter: Callable[[str], bool] | None
    token_id: int | None = None  # re-checked during the session (`access_recheck`, the sweep)
    # accounts.access.DocumentPolicy, compiled on the first pushed change and again whenever
    # the session re-checks its access: the per-change check then needs no query.
    policy: Any = None
    purge_seq: int = 0  # the purge horizon at Connect (connect.ack's `purgeMarker`)


def session_open(
    *,
    tenant_slug: str,
    collection_name: str,
    url_user: str | None,
    raw_token: object,
    origin: str,
    replica_name: str = "",
    address: str = "",
    polling: bool = False,
) -> SessionGrant:
    """Authenticate a Connect and register the replica (PROTOCOL.md section 4, step 1).

    `polling`: a replica that opens a socket per sync (a G3 session, see `replica_connected`).

    Raises a fatal DataGateError: DG-1001 for a bad, expired or revoked token, DG-1002 without
    the `read` scope, DG-1003 when the URL names another user, DG-3001 when the collection does
    not exist or the user may not read it (the two look alike on purpose).
    """
    try:
        token = token_authenticate(raw_token)
    except TokenRejected as rejected:
        raise DataGateError(ErrorCode.TOKEN_INVALID, fatal=True, reason=rejected.reason) from None
    user = token.user
    user_name = user.get_username()
    if url_user is not None and url_user != user_name:
        raise DataGateError(ErrorCode.USER_MISMATCH, fatal=True, user=url_user)
    if not access.access_scope(scopes=token.scopes, scope="read"):
        raise DataGateError(ErrorCode.TOKEN_SCOPE, fatal=True, scope="read")
    not_found = DataGateError(
        ErrorCode.COLLECTION_NOT_FOUND, fatal=True, tenant=tenant_slug, collection=collection_name
    )
    # The collection and its tenant in one plain statement (the tenant alone when the
    # collection is new).
    collection, tenant = collection_and_tenant(tenant_slug, collection_name)
    if tenant is None:
        raise not_found
    # Decided once: the policy's can_read and can_write are access_collection_read and
    # access_collection_write (the same role and grants), and the session keeps the policy as
    # its read filter and per-change write guard. Asking the three apart cost a Connect two more
    # role look-ups and grant queries (bench/RESULTS.md, "the connect path, profiled").
    policy = access.document_policy(
        user=user, tenant=tenant, collection_name=collection_name, collection=collection
    )
    if not policy.can_read:
        raise not_found
    if collection is None:
        may_create = (
            settings.DATAGATE["AUTO_CREATE_COLLECTIONS"]
            and access.access_scope(scopes=token.scopes, scope="write")
            and access.access_collection_create(user=user, tenant=tenant)
        )
        if not may_create:
            raise not_found
        try:
            collection, _ = collection_get_or_create(tenant=tenant, name=collection_name)
        except ValidationError:
            raise not_found from None
        # Grants or key rules may come with the new collection: decide on it, not on its absence.
        policy = access.document_policy(
            user=user, tenant=tenant, collection_name=collection_name, collection=collection
        )
        if not policy.can_read:
            raise not_found
    may_push = access.access_scope(scopes=token.scopes, scope="write") and policy.can_write
    replica = replica_connected(
        collection_id=collection.pk,
        replica_id=origin,
        user_id=user.pk,
        name=replica_name,
        address=address,
        polling=polling,
    )
    return SessionGrant(
        user=user,
        user_name=user_name,
        tenant=tenant,
        collection_id=collection.pk,
        replica_pk=replica.pk,
        may_push=may_push,
        scopes=frozenset(token.scopes),
        last_seq=collection.last_seq,
        purge_seq=collection.purge_seq,
        epoch=collection.epoch,
        read_filter=policy.read_filter,
        token_id=token.token_id,
        policy=policy,
    )


def session_chunks_apply(
    *,
    grant: SessionGrant,
    chunks: list[tuple[Mapping[str, Any], str]],
    origin: str,
    collection_name: str,
    same_version_is_noop: bool = False,
) -> list[ApplyResult]:
    """Apply pushed chunks or live feeds, given as (feed, message id), in one database step.

    The chunks (the consumer queues those that arrive while earlier ones are applied) are
    applied in order in one transaction (`batch_apply_many`), each with its own result. The
    replica's counters are updated once for all of them; rejected changes are recorded as
    error events, one per error code and chunk.
    """
    if grant.policy is None:
        grant.policy = access.document_policy(
            user=grant.user, tenant=grant.tenant, collection_name=collection_name
        )
    results = batch_apply_many(
        # The user through the session's token: its pushes need the token's `write` scope
        # as well as the user's right (DG-1002, DG-3002..3004 per change).
        actor=access.Bearer(user=grant.user, scopes=grant.scopes),
        collection_id=grant.collection_id,
        chunks=chunks,
        origin=origin,
        replica_pk=grant.replica_pk,
        policy=grant.policy,
        same_version_is_noop=same_version_is_noop,
        # Every chunk is a decoded frame's feed (replication.consumers, parse_message).
        json_values=True,
    )
    applied = rejected = 0
    last_seq: int | None = None
    for (_, message_id), result in zip(chunks, results, strict=True):
        applied += result.applied
        rejected += len(result.rejected)
        last_seq = result.last_seq if result.last_seq is not None else last_seq
        by_code: dict[str, list[Rejection]] = {}
        for rejection in result.rejected:
            by_code.setdefault(rejection.error.code, []).append(rejection)
        for rejections in by_code.values():
            error_event_record(
                error=rejections[0].error,
                user_id=grant.user.pk,
                replica_pk=grant.replica_pk,
                tenant=grant.tenant.slug,
                collection=collection_name,
                context={
                    "message_id": message_id,
                    "rejected": len(rejections),
                    "ids": [r.doc_id for r in rejections[:20]],
                },
            )
    replica_pushed(
        replica_pk=grant.replica_pk, applied=applied, rejected=rejected, last_seq=last_seq
    )
    return results


# --- re-checks during the session --------------------------------------------------------


@dataclass
class AccessUpdate:
    """What a re-check or a token refresh found, applied to the session in the event loop."""

    error: DataGateError | None = None
    policy: Any = None
    may_push: bool = False
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
        may_push=access.access_scope(scopes=scopes, scope="write") and policy.can_write,
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
    try:
        info = token_authenticate(raw_token)
    except TokenRejected as rejected:
        return AccessUpdate(
            error=DataGateError(ErrorCode.TOKEN_REFRESH_REFUSED, reason=rejected.reason)
        )
    if info.user.pk != grant.user.pk:
        reason = "the token belongs to another user"
        return AccessUpdate(error=DataGateError(ErrorCode.TOKEN_REFRESH_REFUSED, reason=reason))
    if not access.access_scope(scopes=info.scopes, scope="read"):
        reason = "the token lacks scope 'read'"
        return AccessUpdate(error=DataGateError(ErrorCode.TOKEN_REFRESH_REFUSED, reason=reason))
    update = access_recheck(
        grant=grant, collection_name=collection_name, token_id=info.token_id, scopes=info.scopes
    )
    update.expires_ms = int(info.expires.timestamp() * 1000)
    return update


# --- the sweep: the database side (replication/consumer_access.py runs it) ------------------------


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
