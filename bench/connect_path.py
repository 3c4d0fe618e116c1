"""The connect path in process (issue 21): what a Connect costs the database side, step by step.

The `connections` and `servers` benchmarks measure connects per second through a server; this
takes the same steps without a socket, in the bench's own process, on the pass's database, so
each gets a time and a query count of its own:

- token check: `accounts.tokens.token_authenticate`;
- access compilation: `access_collection_read`, `access_collection_write`, `document_policy`;
- replica upsert: `services.replicas.replica_connected` (a new replica each call, as after a
  restart);
- session_open (`services.sessions`): all of the above and the tenant and collection look-ups,
  as the consumer calls it;
- empty pull: `selectors.collection_head`, all the consumer reads for a replica at head.

Same-run limit: one trivial ORM query (a tenant by slug), the unit every step is counted in.
`session_open` is also run under cProfile; its top functions (cumulative) are recorded.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

from bench.harness import TENANT, PassContext

NAME = "connect_path"


def _timed(calls: int, step: Callable[[int], Any]) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        step(-1)
    started = time.perf_counter()
    for index in range(calls):
        step(index)
    seconds = time.perf_counter() - started
    return {
        "calls": calls,
        "ms_per_call": round(seconds * 1000 / calls, 3),
        "queries_per_call": len(queries.captured_queries),
    }


def run(ctx: PassContext) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from accounts import access
    from accounts.models import Tenant
    from accounts.tokens import token_authenticate
    from replication import selectors
    from replication.models import Collection
    from replication.services import replicas, sessions

    calls = ctx.sizes.connect_path_calls
    stamp = time.time_ns()
    name = f"connect-path-{stamp}"
    user = get_user_model().objects.get(pk=ctx.user_id)
    tenant = Tenant.objects.get(slug=TENANT)

    def session_open(index: int, prefix: str = "open") -> Any:
        return sessions.session_open(
            tenant_slug=TENANT,
            collection_name=name,
            url_user=None,
            raw_token=ctx.token,
            origin=f"{prefix}-{stamp}-{index}",
            replica_name="bench",
            address="127.0.0.1",
        )

    grant = session_open(-2)  # creates the collection
    collection = Collection.objects.get(pk=grant.collection_id)

    def one_query(index: int) -> None:
        Tenant.objects.filter(slug=TENANT).first()

    def token_check(index: int) -> None:
        token_authenticate(ctx.token)

    def access_compile(index: int) -> None:
        access.access_collection_read(user=user, tenant=tenant, collection_name=name)
        access.access_collection_write(user=user, tenant=tenant, collection_name=name)
        access.document_policy(
            user=user, tenant=tenant, collection_name=name, collection=collection
        )

    def replica_upsert(index: int) -> None:
        replicas.replica_connected(
            collection_id=collection.pk,
            replica_id=f"upsert-{stamp}-{index}",
            user_id=user.pk,
            name="bench",
            address="127.0.0.1",
        )

    def empty_pull(index: int) -> None:
        # What the consumer reads for a replica already at head: the position (ReadPosition);
        # the session machine then finds nothing to read (machine.position_done) and asks for
        # no chunk. This step was collection_head and a change_page, a query more than that.
        selectors.collection_head(collection_id=collection.pk)

    steps = {
        "one_query": _timed(calls, one_query),
        "token_check": _timed(calls, token_check),
        "access_compilation": _timed(calls, access_compile),
        "replica_upsert": _timed(calls, replica_upsert),
        "session_open": _timed(calls, session_open),
        "empty_pull": _timed(calls, empty_pull),
    }
    unit = steps["one_query"]["ms_per_call"]
    for entry in steps.values():
        entry["ratio_to_one_query"] = round(entry["ms_per_call"] / unit, 1) if unit else None

    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(calls):
        session_open(index, "profiled")
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    top = [
        line.strip()
        for line in text.getvalue().splitlines()
        if line.strip() and line.strip()[0].isdigit()
    ]
    per_connect = steps["session_open"]["ms_per_call"] + steps["empty_pull"]["ms_per_call"]
    return {
        "steps": steps,
        "database_ms_per_connect": round(per_connect, 3),
        "database_connects_per_s": round(1000 / per_connect) if per_connect else None,
        "session_open_profile_top": top,
        "headline": (
            f"session_open {steps['session_open']['ms_per_call']} ms "
            f"({steps['session_open']['queries_per_call']} queries), empty pull "
            f"{steps['empty_pull']['ms_per_call']} ms; one query {unit} ms; "
            f"database side alone {round(1000 / per_connect) if per_connect else '-'} connects/s"
        ),
    }
