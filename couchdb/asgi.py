"""The CouchDB replication protocol over HTTP, under `/couchdb/{tenant}/` (docs/couchdb.md).

A thin ASGI shell: it parses the request, calls `couchdb.services` with the acting user (one
`database_sync_to_async` step each), and renders CouchDB 3's status codes and JSON shapes.
It is a plain ASGI application rather than Django views so that live `_changes` feeds can
stream heartbeats and lines, and so that PouchDB's many small requests skip the middleware
stack. `datagate_site/asgi.py` routes `/couchdb/` here and everything else to Django.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

from channels.db import database_sync_to_async
from django.conf import settings

from core.errors import DataGateError, ErrorCode, error_by_code
from couchdb import live, services, writes
from couchdb.checkpoints import get_checkpoints
from couchdb.live import FeedWaiter
from couchdb.services import Actor, CouchError, DatabaseGrant

logger = logging.getLogger(__name__)

PREFIX = "/couchdb/"
MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_MS = 60_000

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_db = database_sync_to_async


def _encode_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _encode(value: Any) -> bytes:
    return _encode_text(value).encode()


def _bad(name: str, detail: str) -> CouchError:
    return CouchError.from_datagate(
        DataGateError(ErrorCode.BAD_PARAMETER, name=name, detail=detail)
    )


class Request:
    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.query: dict[str, str] = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }
        self.disconnected = asyncio.Event()
        self.started = False

    async def body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise CouchError(413, "too_large", "the request body is too large")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def json_body(self) -> Any:
        raw = await self.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise CouchError(400, "bad_request", "invalid UTF-8 JSON") from None
        except RecursionError:
            too_deep = DataGateError(ErrorCode.JSON_TOO_DEEP, detail="the request body")
            raise CouchError.from_datagate(too_deep) from None

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.query.get(name)
        if raw is None:
            return default
        if raw in ("true", "1", ""):
            return True
        if raw in ("false", "0"):
            return False
        raise _bad(name, "use true or false")

    def integer(self, name: str) -> int | None:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return None
        if not raw.isdigit() or len(raw) > 15:
            raise _bad(name, "not a non-negative integer")
        return int(raw)

    def json_param(self, name: str) -> Any:
        raw = self.query.get(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise _bad(name, "not JSON") from None

    async def start(self, status: int, content_type: str = "application/json") -> None:
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"cache-control", b"must-revalidate"),
                    (b"server", b"DataGate (CouchDB replication protocol)"),
                ],
            }
        )

    async def write(self, chunk: bytes) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def finish(self, chunk: bytes = b"") -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def respond(self, status: int, value: Any) -> None:
        await self.start(status)
        await self.finish(_encode(value))


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry point for `/couchdb/...` HTTP requests."""
    request = Request(scope, receive, send)
    try:
        await _dispatch(request)
    except CouchError as error:
        if not request.started:
            await request.respond(error.status, {"error": error.error, "reason": error.reason})
        else:
            await request.finish()
    except DataGateError as problem:
        refused = CouchError.from_datagate(problem)
        if not request.started:
            await request.respond(
                refused.status, {"error": refused.error, "reason": refused.reason}
            )
        else:
            await request.finish()
    except Exception:
        reference = secrets.token_hex(4)
        logger.exception("CouchDB request failed (reference %s)", reference)
        if not request.started:
            text = ErrorCode.INTERNAL.text(reference=reference)
            await request.respond(500, {"error": "unknown_error", "reason": text})
        else:
            await request.finish()


def _segments(scope: Scope) -> list[str]:
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    return [unquote(part) for part in path[len(PREFIX) :].split("/")]


def _bearer(request: Request) -> str | None:
    scheme, _, raw = request.headers.get("authorization", "").partition(" ")
    return raw.strip() if scheme.lower() == "bearer" else None


async def _actor(request: Request) -> Actor:
    return await _db(services.actor_authenticate)(raw_token=_bearer(request))


# (token, tenant, db) -> (grant, monotonic time it may be used until). PouchDB sends several
# requests a second per database; deciding access once a second instead of per request saves
# a dozen queries each. The price: a revoked token or a changed rule reaches new requests
# within GRANT_CACHE_SECONDS (live feeds re-check on their own, docs/couchdb.md).
GRANT_CACHE_SECONDS = 1.0
GRANT_CACHE_MAX = 10_000
_grants: dict[tuple[str, str, str], tuple[DatabaseGrant, float]] = {}
# Decisions being made: requests that arrive meanwhile wait for the same one.
_deciding: dict[tuple[str, str, str], asyncio.Future[DatabaseGrant]] = {}


# collection id -> (database info, monotonic time it may be used until). A live PouchDB asks
# for it with every batch; the counts and update_seq it shows may be this much behind.
INFO_CACHE_SECONDS = 1.0
_infos: dict[int, tuple[dict[str, Any], float]] = {}


async def _info(grant: DatabaseGrant) -> dict[str, Any]:
    now = time.monotonic()
    cached = _infos.get(grant.collection_id)
    if cached is not None and cached[1] > now:
        return {**cached[0], "db_name": grant.name}
    info = await _db(services.database_info)(grant=grant)
    if len(_infos) >= GRANT_CACHE_MAX:
        _infos.clear()
    _infos[grant.collection_id] = (info, now + INFO_CACHE_SECONDS)
    return info


def _forget(token: str) -> None:
    """Drop the token's cached grants: its feed found it revoked, or its access changed."""
    for key in [k for k in _grants if k[0] == token]:
        del _grants[key]


async def _grant(request: Request, tenant: str, name: str) -> DatabaseGrant:
    token = _bearer(request) or ""
    key = (token, tenant, name)
    now = time.monotonic()
    cached = _grants.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    pending = _deciding.get(key)
    if pending is not None:
        return await asyncio.shield(pending)
    future: asyncio.Future[DatabaseGrant] = asyncio.get_running_loop().create_future()
    _deciding[key] = future
    try:
        grant = await _db(services.grant_open)(raw_token=token, tenant_slug=tenant, name=name)
    except Exception as problem:
        future.set_exception(problem)
        future.exception()  # retrieved: no warning when nobody else was waiting
        raise
    except BaseException:
        future.cancel()
        raise
    finally:
        _deciding.pop(key, None)
    future.set_result(grant)
    now = time.monotonic()
    until = now + GRANT_CACHE_SECONDS
    expires = grant.actor.expires
    if expires is not None:
        until = min(until, now + (expires - datetime.now(UTC)).total_seconds())
    if len(_grants) >= GRANT_CACHE_MAX:
        for stale in [k for k, (_, t) in _grants.items() if t <= now]:
            del _grants[stale]
        if len(_grants) >= GRANT_CACHE_MAX:
            _grants.clear()
    _grants[key] = (grant, until)
    return grant


async def _dispatch(request: Request) -> None:
    parts = _segments(request.scope)
    tenant = parts[0] if parts else ""
    rest = parts[1:]
    if rest and rest[-1] == "":
        rest = rest[:-1]
    method = request.method
    if not tenant:
        raise CouchError(404, "not_found", "no tenant in the URL: /couchdb/{tenant}/")
    if not rest:
        if method not in ("GET", "HEAD"):
            raise CouchError(405, "method_not_allowed", "Only GET,HEAD allowed")
        await request.respond(
            200,
            {
                "couchdb": "Welcome",
                "version": services.COUCHDB_VERSION,
                "uuid": services.server_uuid(tenant_slug=tenant),
                "vendor": {"name": "DataGate"},
                "features": [],
            },
        )
        return
    name = rest[0]
    if len(rest) == 1:
        if method == "PUT":
            actor = await _actor(request)
            await _db(services.database_create)(actor=actor, tenant_slug=tenant, name=name)
            await request.respond(201, {"ok": True})
            return
        grant = await _grant(request, tenant, name)
        if method in ("GET", "HEAD"):
            await request.respond(200, await _info(grant))
            return
        if method == "POST":
            doc = await request.json_body()
            results = await writes.docs_apply(grant=grant, docs=[doc], new_edits=True)
            await _single_write(request, results[0], created=201)
            return
        raise CouchError(405, "method_not_allowed", "Only GET,HEAD,PUT,POST allowed")
    grant = await _grant(request, tenant, name)
    action, tail = rest[1], rest[2:]
    handler = ENDPOINTS.get(action)
    if handler is not None and not tail:
        await handler(request, grant)
        return
    if action == "_local" and len(tail) == 1:
        await _local(request, grant, tail[0])
        return
    if action == "_design" or action.startswith("_"):
        raise CouchError.from_datagate(
            DataGateError(ErrorCode.COUCHDB_UNSUPPORTED, what="/".join(rest[1:])[:60])
        )
    await _document(request, grant, "/".join(rest[1:]))


async def _single_write(request: Request, result: Mapping[str, Any], *, created: int) -> None:
    if "error" in result:
        status = {"conflict": 409, "forbidden": 403, "not_found": 404}.get(result["error"], 400)
        reason = str(result.get("reason") or "")
        with contextlib.suppress(KeyError):
            status = error_by_code(reason[:7]).http_status
        await request.respond(status, {"error": result["error"], "reason": result.get("reason")})
        return
    await request.respond(created, result)


# --- documents -----------------------------------------------------------------------------


async def _document(request: Request, grant: DatabaseGrant, doc_id: str) -> None:
    method = request.method
    if method in ("GET", "HEAD"):
        await _document_get(request, grant, doc_id)
        return
    if method == "PUT":
        doc = await request.json_body()
        if not isinstance(doc, dict):
            raise CouchError(400, "bad_request", "Document must be a JSON object")
        doc["_id"] = doc_id
        if "rev" in request.query and "_rev" not in doc:
            doc["_rev"] = request.query["rev"]
        new_edits = request.flag("new_edits", default=True)
        results = await writes.docs_apply(grant=grant, docs=[doc], new_edits=new_edits)
        await _single_write(request, results[0], created=201)
        return
    if method == "DELETE":
        rev = request.query.get("rev") or request.headers.get("if-match", "").strip('"') or None
        doc = {"_id": doc_id, "_deleted": True, **({"_rev": rev} if rev else {})}
        results = await writes.docs_apply(grant=grant, docs=[doc], new_edits=True)
        await _single_write(request, results[0], created=200)
        return
    raise CouchError(405, "method_not_allowed", "Only DELETE,GET,HEAD,PUT allowed")


async def _document_get(request: Request, grant: DatabaseGrant, doc_id: str) -> None:
    with_revs = request.flag("revs")
    latest = request.flag("latest")
    open_revs = request.query.get("open_revs")
    if open_revs is not None:
        asked: list[str | None]
        if open_revs == "all":
            view = await _db(_view_or_none)(grant, doc_id)
            asked = list(view.leaves()) if view is not None else []
        else:
            listed = request.json_param("open_revs")
            if not isinstance(listed, list) or not all(isinstance(r, str) for r in listed):
                raise _bad("open_revs", "a JSON list of revisions or all")
            asked = list(listed)
        found = await _db(services.docs_get)(
            grant=grant, asked=[(doc_id, r) for r in asked], with_revs=with_revs, latest=latest
        )
        answer: list[dict[str, Any]] = []
        for item, rev in zip(found, asked, strict=True):
            entry = item["docs"][0]
            answer.append(entry if "ok" in entry else {"missing": rev})
        await request.respond(200, answer)
        return
    rev = request.query.get("rev")
    view, body, leaf = await _db(services.doc_open)(
        grant=grant, doc_id=doc_id, rev=rev, latest=latest
    )
    doc = services.doc_render(doc_id, view, body, rev=leaf, with_revs=with_revs)
    if request.flag("conflicts"):
        pass  # losing branches are closed (docs/couchdb.md): there are never `_conflicts`
    await request.respond(200, doc)


def _view_or_none(grant: DatabaseGrant, doc_id: str) -> Any:
    if not grant.may_read(doc_id):
        return None
    return services.views_read(collection_id=grant.collection_id, ids=[doc_id]).get(doc_id)


async def _local(request: Request, grant: DatabaseGrant, doc_id: str) -> None:
    method = request.method
    held = get_checkpoints()
    if method in ("GET", "HEAD"):
        await request.respond(200, await held.get(grant, doc_id))
    elif method == "PUT":
        doc = await request.json_body()
        if not isinstance(doc, dict):
            raise CouchError(400, "bad_request", "Document must be a JSON object")
        rev = await held.put(grant, doc_id, doc)
        await request.respond(201, {"ok": True, "id": f"_local/{doc_id}", "rev": rev})
    elif method == "DELETE":
        await held.delete(grant, doc_id)
        await request.respond(200, {"ok": True, "id": f"_local/{doc_id}", "rev": "0-0"})
    else:
        raise CouchError(405, "method_not_allowed", "Only DELETE,GET,HEAD,PUT allowed")


# --- bulk endpoints ----------------------------------------------------------------------------


async def _bulk_docs(request: Request, grant: DatabaseGrant) -> None:
    if request.method != "POST":
        raise CouchError(405, "method_not_allowed", "Only POST allowed")
    body = await request.json_body()
    docs = body.get("docs") if isinstance(body, dict) else None
    if not isinstance(docs, list):
        raise CouchError(400, "bad_request", "POST body must include `docs` parameter.")
    new_edits = body.get("new_edits", True)
    if not isinstance(new_edits, bool):
        raise CouchError(400, "bad_request", "`new_edits` parameter must be a boolean.")
    results = await writes.docs_apply(grant=grant, docs=docs, new_edits=new_edits)
    if not new_edits:
        # CouchDB answers replicated writes with errors only.
        results = [r for r in results if "error" in r]
    await request.respond(201, results)


async def _bulk_get(request: Request, grant: DatabaseGrant) -> None:
    if request.method != "POST":
        raise CouchError(405, "method_not_allowed", "Only POST allowed")
    body = await request.json_body()
    docs = body.get("docs") if isinstance(body, dict) else None
    if not isinstance(docs, list):
        raise CouchError(400, "bad_request", "Missing JSON list of 'docs'.")
    asked: list[tuple[str, str | None]] = []
    for item in docs:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise CouchError(400, "bad_request", "every doc needs an id")
        rev = item.get("rev")
        asked.append((item["id"], rev if isinstance(rev, str) else None))
    with_revs = request.flag("revs")
    results = services.docs_get_cached(grant=grant, asked=asked, with_revs=with_revs)
    if results is None:
        results = await _db(services.docs_get)(
            grant=grant, asked=asked, with_revs=with_revs, latest=request.flag("latest")
        )
    await request.start(200)
    await request.finish(bulk_get_body(results))


def bulk_get_body(results: Sequence[dict[str, Any] | services.EncodedResult]) -> bytes:
    """`_bulk_get`'s answer: results spliced from stored text (`services.EncodedResult`)
    are joined in as they are, the others encoded."""
    parts = [r.text if isinstance(r, services.EncodedResult) else _encode_text(r) for r in results]
    return ('{"results":[' + ",".join(parts) + "]}").encode()


async def _revs_diff(request: Request, grant: DatabaseGrant) -> None:
    if request.method != "POST":
        raise CouchError(405, "method_not_allowed", "Only POST allowed")
    body = await request.json_body()
    if not isinstance(body, dict) or not all(
        isinstance(v, list) and all(isinstance(r, str) for r in v) for v in body.values()
    ):
        raise CouchError(400, "bad_request", "body must map ids to lists of revisions")
    await request.respond(200, await _db(services.revs_diff)(grant=grant, asked=body))


async def _all_docs(request: Request, grant: DatabaseGrant) -> None:
    keys = request.json_param("keys")
    if request.method == "POST":
        body = await request.json_body()
        keys = body.get("keys", keys) if isinstance(body, dict) else keys
    elif request.method not in ("GET", "HEAD"):
        raise CouchError(405, "method_not_allowed", "Only GET,HEAD,POST allowed")
    if keys is not None and (
        not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
    ):
        raise _bad("keys", "a JSON list of ids")
    start = request.json_param("startkey") or request.json_param("start_key")
    end = request.json_param("endkey") or request.json_param("end_key")
    if start is not None and not isinstance(start, str):
        raise _bad("startkey", "a JSON string")
    if end is not None and not isinstance(end, str):
        raise _bad("endkey", "a JSON string")
    answer = await _db(services.all_docs)(
        grant=grant,
        keys=keys,
        start=start,
        end=end,
        limit=request.integer("limit"),
        skip=request.integer("skip") or 0,
        include_docs=request.flag("include_docs"),
        descending=request.flag("descending"),
    )
    await request.respond(200, answer)


async def _ensure_full_commit(request: Request, grant: DatabaseGrant) -> None:
    await request.respond(201, {"ok": True, "instance_start_time": "0"})


# --- _changes ----------------------------------------------------------------------------------


async def _changes(request: Request, grant: DatabaseGrant) -> None:
    if request.method not in ("GET", "POST"):
        raise CouchError(405, "method_not_allowed", "Only GET,POST allowed")
    body = await request.json_body() if request.method == "POST" else {}
    feed = request.query.get("feed", "normal")
    if feed not in ("normal", "longpoll", "continuous", "eventsource"):
        raise _bad("feed", "normal, longpoll, continuous or eventsource")
    doc_ids: frozenset[str] | None = None
    selector: Any = None
    filter_name = request.query.get("filter")
    if filter_name == "_doc_ids":
        listed = body.get("doc_ids") if isinstance(body, dict) and "doc_ids" in body else None
        if listed is None:
            listed = request.json_param("doc_ids")
        if not isinstance(listed, list) or not all(isinstance(i, str) for i in listed):
            raise CouchError(400, "bad_request", "filter=_doc_ids needs a list of doc_ids")
        doc_ids = frozenset(listed)
    elif filter_name in ("_selector", "_view"):
        selector = await _changes_selector(request, grant, filter_name, body)
    elif filter_name:
        raise CouchError.from_datagate(
            DataGateError(ErrorCode.COUCHDB_UNSUPPORTED, what=f"filter {filter_name[:40]}")
        )
    limit = request.integer("limit")
    if limit == 0:
        limit = 1
    heartbeat = request.integer("heartbeat")
    if "heartbeat" in request.query and request.query["heartbeat"] in ("true", ""):
        heartbeat = DEFAULT_TIMEOUT_MS
    timeout = request.integer("timeout")
    include_docs = request.flag("include_docs")
    all_docs = request.query.get("style") == "all_docs"
    options = {
        "include_docs": include_docs,
        "all_docs": all_docs,
        "doc_ids": doc_ids,
        "selector": selector,
        # A replicator's page: its _bulk_get of these revisions follows (changes_read).
        "prefetch": all_docs and not include_docs,
    }
    raw_since = request.query.get("since")
    tailed = _from_tail(grant, raw_since, limit, options)
    if tailed is not None:
        since, page = tailed
    else:
        since, page = await _db(services.changes_from)(
            grant=grant, raw_since=raw_since, limit=limit, **options
        )
    if feed == "normal" or (feed == "longpoll" and page.results):
        await request.respond(200, _changes_body(page, since))
        return
    await _live_changes(request, grant, feed, since, page, limit, heartbeat, timeout, options)


async def _changes_selector(
    request: Request, grant: DatabaseGrant, filter_name: str, body: Any
) -> Any:
    """`filter=_selector` (a Mango `selector` in the body, or the query as JSON) or
    `filter=_view&view=NAME` (a DataGate data view; docs/protocol.md section 12)."""
    try:
        if filter_name == "_view":
            name = request.query.get("view")
            if not name:
                raise CouchError(400, "bad_request", "filter=_view needs view=NAME")
            return await _db(services.changes_selector)(grant=grant, view=name)
        raw = body.get("selector") if isinstance(body, dict) else None
        if raw is None:
            raw = request.json_param("selector")
        return await _db(services.changes_selector)(grant=grant, raw=raw)
    except DataGateError as problem:
        raise CouchError.from_datagate(problem) from problem


def _from_tail(
    grant: DatabaseGrant, raw_since: str | None, limit: int | None, options: dict[str, Any]
) -> tuple[int, services.ChangesPage] | None:
    """The page after `since` from the collection's live tail (couchdb/live.py), without a
    database step, when the tail covers it; else None."""
    tail = live.tail_if_any(grant.collection_id)
    if tail is None or raw_since in (None, "now"):
        return None
    markers = services.seq_decode(raw_since)
    if markers.seq == 0 or markers.epoch != tail.epoch:
        return None
    blocks = tail.covering(markers.seq)
    if blocks is None:
        return None
    if not blocks:
        return markers.seq, services.ChangesPage([], markers.seq, markers.seq, tail.epoch)
    page = services.changes_from_blocks(
        grant=grant, blocks=blocks, since=markers.seq, limit=limit, **options
    )
    return None if page is None else (markers.seq, page)


def _changes_body(page: services.ChangesPage, since: int) -> dict[str, Any]:
    return {
        "results": page.results,
        "last_seq": services.seq_encode(page.last_seq, page.epoch) if page.epoch else str(since),
        "pending": max(0, page.head - page.last_seq),
    }


async def _watch_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            request.disconnected.set()
            return


async def _live_changes(
    request: Request,
    grant: DatabaseGrant,
    feed: str,
    since: int,
    first: services.ChangesPage,
    limit: int | None,
    heartbeat: int | None,
    timeout: int | None,  # noqa: ASYNC109 (CouchDB's parameter, in milliseconds)
    options: dict[str, Any],
) -> None:
    """longpoll: answer as soon as there is a change after `since` (or at the timeout);
    continuous/eventsource: stream every change until the timeout, the limit or the client
    goes. Waiting is the hub's wake-up call (couchdb/live.py), never a polling loop."""
    if heartbeat is None and timeout is None:
        timeout = DEFAULT_TIMEOUT_MS
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout / 1000 if timeout is not None and heartbeat is None else None
    recheck = recheck_interval()
    streaming = feed != "longpoll"
    content_type = "text/event-stream" if feed == "eventsource" else "application/json"
    if streaming or heartbeat:
        await request.start(200, content_type)
    watcher = asyncio.create_task(_watch_disconnect(request))
    waiter = FeedWaiter(grant.collection_id, since)
    position = since
    sent = 0
    next_beat = loop.time() + heartbeat / 1000 if heartbeat else None
    next_check = loop.time() + recheck
    ended_by = ""
    page: services.ChangesPage | None = first
    last = first
    try:
        fresh = False
        while True:
            left = None if limit is None else limit - sent
            if page is None:
                page = services.changes_from_blocks(
                    grant=grant, blocks=waiter.blocks, since=position, limit=left, **options
                )
            if page is None:
                page = await _db(services.changes_read)(
                    grant=grant, since=position, limit=left, **options
                )
            position = page.last_seq
            last = page
            if page.results:
                sent += len(page.results)
                if feed == "longpoll":
                    break
                for row in page.results:
                    await request.write(_stream_line(feed, row))
            if limit is not None and sent >= limit:
                break
            waiter.moved(position)
            page = None
            if not fresh:
                fresh = True
                if await waiter.join(last.epoch):
                    continue
            while True:
                now = loop.time()
                wake_at = min(t for t in (deadline, next_beat, next_check) if t is not None)
                woken = await _wait(request, waiter, max(0.0, wake_at - now))
                if request.disconnected.is_set():
                    return
                if woken:
                    break
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                if next_beat is not None and now >= next_beat:
                    next_beat = now + heartbeat / 1000 if heartbeat else None
                    await request.write(b"\n")
                if now >= next_check:
                    next_check = now + recheck
                    ended_by = await _db(services.feed_still_allowed)(grant=grant)
                    if ended_by:
                        break
            if not woken:
                break
    finally:
        watcher.cancel()
        await waiter.leave()
    if ended_by:
        logger.info("live _changes feed ended: %s", ended_by)
        _forget(_bearer(request) or "")
    last_seq = services.seq_encode(position, last.epoch) if last.epoch else str(since)
    if feed == "longpoll":
        answer = {"results": last.results, "last_seq": last_seq, "pending": 0}
        if request.started:
            await request.finish(_encode(answer))
        else:
            await request.respond(200, answer)
    elif feed == "continuous":
        await request.finish(_encode({"last_seq": last_seq}) + b"\n")
    else:
        await request.finish()


def _stream_line(feed: str, row: dict[str, Any]) -> bytes:
    if feed == "eventsource":
        return b"data: " + _encode(row) + b"\nid: " + row["seq"].encode() + b"\n\n"
    return _encode(row) + b"\n"


async def _wait(request: Request, waiter: FeedWaiter, seconds: float) -> bool:
    """Wait for the hub's offer, `seconds`, or the client going; True if woken."""
    woken = asyncio.ensure_future(waiter.woken.wait())
    gone = asyncio.ensure_future(request.disconnected.wait())
    try:
        await asyncio.wait({woken, gone}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (woken, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return waiter.woken.is_set()


def recheck_interval() -> float:
    """Seconds between a live feed's re-checks of its token and access (DATAGATE
    SESSION_RECHECK_INTERVAL, as for websocket sessions): revocation or a changed key rule
    ends a feed within this."""
    return float(settings.DATAGATE["SESSION_RECHECK_INTERVAL"])


ENDPOINTS: dict[str, Callable[[Request, DatabaseGrant], Awaitable[None]]] = {
    "_changes": _changes,
    "_bulk_docs": _bulk_docs,
    "_bulk_get": _bulk_get,
    "_revs_diff": _revs_diff,
    "_all_docs": _all_docs,
    "_ensure_full_commit": _ensure_full_commit,
}
