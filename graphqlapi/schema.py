"""The GraphQL schema at /graphql/ (docs/graphql.md): a thin shell over the services.

Every resolver asks the context for the acting user with the scope it needs
(`graphqlapi/context.py`, the one GraphQL module that asks `accounts.access`), then calls the
same selectors and services as the websocket protocol and the HTTP API, in one
`database_sync_to_async` call: they decide access for that user (`replication.selectors`,
`replication.services`, `topics.requests`), documents enter through the one validation door in
`replication.services`, and errors are the catalogue's `DataGateError`s, which
`graphqlapi.errors` renders with `extensions.code`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, NewType

import strawberry
from channels.db import database_sync_to_async
from django.conf import settings
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from api import selectors as api_selectors
from core import metrics
from core.errors import DataGateError, ErrorCode
from graphqlapi import live, selectors
from graphqlapi.errors import DataGateErrors
from replication.models import Collection as CollectionModel
from replication.protocol.markers import Markers as WireMarkers
from replication.selectors import Change, collection_for_reader, collections_visible
from replication.services.documents import (
    collection_for_writer,
    document_delete,
    document_put,
)
from topics import selectors as topic_selectors
from topics.requests import (
    request_connect_user,
    request_messages_publish,
    request_offset_commit,
    request_subscribe,
)
from topics.services import Publication

MAX_DEPTH = 10
MAX_TOKENS = 2000
MAX_ALIASES = 15
MAX_PAGE = 1000
DEFAULT_DEVICE = "graphql"


def _long(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("Long must be an integer")
    if not -(2**63) <= value < 2**63:
        raise ValueError("Long must fit in 64 bits")
    return value


if TYPE_CHECKING:  # plain values to mypy; the GraphQL scalars to strawberry
    Long = int
    JSON = Any
else:
    from strawberry.scalars import JSON

    Long = NewType("Long", int)
LONG = strawberry.scalar(
    name="Long",
    serialize=int,
    parse_value=_long,
    description="A 64-bit integer (sequence numbers, offsets, times in epoch milliseconds).",
)


def _run(function: Any) -> Any:
    return database_sync_to_async(function)


def _context(info: Info) -> Any:
    return info.context


def _page(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="first", detail=f"must be 1..{MAX_PAGE}")
    return first


def _device(device: str) -> str:
    if not 1 <= len(device) <= 128:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="device", detail="1..128 characters")
    return device


# --- types ---------------------------------------------------------------------------------


@strawberry.type(description="A position in a collection's (or view's) changes.")
class Markers:
    seq: Long
    epoch: Long

    @staticmethod
    def of(markers: WireMarkers) -> Markers:
        return Markers(seq=markers.seq, epoch=markers.epoch)


@strawberry.input(description="Markers a client stored (zeros on first sync).")
class MarkersInput:
    seq: Long = 0
    epoch: Long = 0


@strawberry.type(description="A collection the caller may read.")
class Collection:
    tenant: str
    name: str
    markers: Markers


@strawberry.type(description="One version of a document: a write, or a delete (`deleted`).")
class Document:
    id: str
    revision: int
    modified: Long = strawberry.field(description="`_modified`, epoch milliseconds")
    origin: str
    deleted: bool
    body: JSON | None = strawberry.field(description="the document's fields; null when deleted")
    seq: Long | None = strawberry.field(description="the change's sequence number")

    @staticmethod
    def of(change: Change) -> Document:
        version = change.version
        return Document(
            id=version.doc_id,
            revision=version.revision,
            modified=version.modified,
            origin=version.origin,
            deleted=change.deleted,
            body=None if change.deleted else version.body,
            seq=change.seq,
        )


@strawberry.type(description="A page of documents in sequence order.")
class DocumentPage:
    documents: list[Document]
    end_cursor: str = strawberry.field(description="pass as `after` for the next page")
    has_more: bool


@strawberry.type(description="Changes after a marker: the pull of the sync protocol.")
class ChangesPage:
    changes: list[Document]
    reset: bool = strawberry.field(
        description="the markers were behind the purge horizon or from another epoch: a full "
        "snapshot follows; drop what you hold that it does not contain"
    )
    start_markers: Markers
    end_markers: Markers
    has_more: bool


@strawberry.type(description="A pub/sub topic the caller can see.")
class Topic:
    name: str
    scope: str
    owner: str | None
    page_size: int
    last_offset: Long
    first_offset: Long | None
    message_count: int


@strawberry.type
class Message:
    offset: Long
    message_id: str
    payload: JSON | None
    publisher: str | None
    published_at: Long = strawberry.field(description="epoch milliseconds")

    @staticmethod
    def of(message: topic_selectors.TopicMessage) -> Message:
        return Message(
            offset=message.offset,
            message_id=message.message_id,
            payload=message.payload,
            publisher=message.publisher,
            published_at=message.published_ms,
        )


@strawberry.type
class MessagePage:
    messages: list[Message]
    last_offset: Long
    committed: Long
    next: Long | None


@strawberry.input
class MessageInput:
    message_id: str
    payload: JSON | None = None


# --- helpers that run in a database thread ---------------------------------------------------


def _collections(user: Any, tenant: str) -> list[Collection]:
    return [
        Collection(tenant=tenant, name=c.name, markers=Markers.of(WireMarkers(c.last_seq, c.epoch)))
        for c in collections_visible(user=user, slug=tenant)
    ]


def _messages(
    user: Any, tenant: str, topic: str, start: int, end: int | None, first: int, device: str
) -> MessagePage:
    caller = request_connect_user(user=user, tenant_slug=tenant, device=device)
    topic_id = request_subscribe(caller=caller, name=topic)
    found = topic_selectors.messages_read(
        topic_id=topic_id, from_offset=start, limit=first, up_to=end
    )
    if found is None:
        raise DataGateError(ErrorCode.TOPIC_NOT_FOUND, topic=topic)
    messages, last = found
    reached = messages[-1].offset if messages else start - 1
    ceiling = last if end is None else min(end, last)
    return MessagePage(
        messages=[Message.of(m) for m in messages],
        last_offset=last,
        committed=topic_selectors.committed_offset(
            topic_id=topic_id, user_id=caller.user_id, device=device
        ),
        next=reached + 1 if len(messages) == first and reached < ceiling else None,
    )


def _origin(user: Any) -> str:
    """The `_origin` of changes written over GraphQL: never a replica's id."""
    return f"graphql:{user.get_username()}"[:128]


def _put(
    user: Any, tenant: str, collection: str, doc_id: str, body: Any, expected: int | None
) -> Change:
    if not isinstance(body, dict):
        raise DataGateError(ErrorCode.BAD_BODY, detail="a document body must be a JSON object")
    fields = dict(body)
    for reserved in ("_id", "_revision"):
        if reserved in fields:
            raise DataGateError(
                ErrorCode.BAD_BODY, detail=f"{reserved} is an argument (id, expectedRevision)"
            )
    fields.pop("_modified", None)
    fields.pop("_origin", None)
    found: CollectionModel = collection_for_writer(user=user, tenant_slug=tenant, name=collection)
    result = document_put(
        actor=user,
        collection_id=found.pk,
        doc_id=doc_id,
        body=fields,
        origin=_origin(user),
        expected_revision=expected,
    )
    metrics.push_record(applied=result.applied, rejected=len(result.rejected))
    # What the caller just wrote, as the HTTP API answers it (a key rule may let a user write
    # ids it may not read; the answer is its own write).
    stored = api_selectors.document_get(collection_id=found.pk, doc_id=doc_id)
    if stored is None:  # a newer change (a delete) won meanwhile
        raise DataGateError(ErrorCode.REVISION_CONFLICT, doc_id=doc_id, expected=expected, actual=0)
    return selectors.document_change(stored)


def _delete(user: Any, tenant: str, collection: str, doc_id: str, expected: int | None) -> bool:
    found = collection_for_reader(user=user, tenant_slug=tenant, name=collection)
    result = document_delete(
        actor=user,
        collection_id=found.pk,
        doc_id=doc_id,
        origin=_origin(user),
        expected_revision=expected,
    )
    metrics.push_record(applied=result.applied, rejected=len(result.rejected))
    return True


def _publish(
    user: Any, tenant: str, topic: str, messages: list[MessageInput], device: str
) -> list[int]:
    limit = int(settings.DATAGATE.get("TOPIC_MAX_PUBLISH", 1000))
    if not messages or len(messages) > limit:
        raise DataGateError(ErrorCode.BAD_BODY, detail=f"publish 1 to {limit} messages")
    caller = request_connect_user(user=user, tenant_slug=tenant, device=device)
    publications = [Publication(message_id=m.message_id, payload=m.payload) for m in messages]
    offsets, _ = request_messages_publish(caller=caller, name=topic, messages=publications)
    return offsets


def _commit(user: Any, tenant: str, topic: str, offset: int, device: str) -> int:
    if offset < 0:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="offset", detail="must be >= 0")
    caller = request_connect_user(user=user, tenant_slug=tenant, device=device)
    return request_offset_commit(caller=caller, name=topic, topic_id=None, offset=offset)


def _cursor(after: str | None) -> int:
    if after is None:
        return 0
    if not after.isdigit() or len(after) > 18:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name="after", detail="not a cursor")
    return int(after)


# --- the schema ----------------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field(description="Collections of a tenant the caller may read.")
    async def collections(self, info: Info, tenant: str) -> list[Collection]:
        user = await _context(info).user_with("read")
        return await _run(_collections)(user, tenant)

    @strawberry.field(description="One live document, or null (missing or not readable).")
    async def document(self, info: Info, tenant: str, collection: str, id: str) -> Document | None:
        user = await _context(info).user_with("read")
        found = await _run(selectors.document_get)(
            user=user, tenant=tenant, collection=collection, doc_id=id
        )
        return None if found is None else Document.of(found)

    @strawberry.field(
        description="Live documents in sequence order, through a view or a Mango selector "
        "(or all), after the cursor `after`."
    )
    async def documents(
        self,
        info: Info,
        tenant: str,
        collection: str,
        view: str | None = None,
        selector: JSON | None = None,
        after: str | None = None,
        first: int = 100,
    ) -> DocumentPage:
        user = await _context(info).user_with("read")
        limit = _page(first)
        after_seq = _cursor(after)

        def read() -> DocumentPage:
            scope = selectors.reading_scope(
                user=user, tenant=tenant, collection=collection, view=view, selector=selector
            )
            found, cursor, more = selectors.documents_after(
                scope=scope, after_seq=after_seq, limit=limit
            )
            return DocumentPage(
                documents=[Document.of(c) for c in found], end_cursor=str(cursor), has_more=more
            )

        return await _run(read)()

    @strawberry.field(
        description="Changes after the stored markers (zeros on first sync), through a view "
        "if given: the sync protocol's pull. Ask again with `endMarkers` while `hasMore`."
    )
    async def changes(
        self,
        info: Info,
        tenant: str,
        collection: str,
        markers: MarkersInput | None = None,
        view: str | None = None,
        first: int = 500,
        snapshot: bool = False,
    ) -> ChangesPage:
        user = await _context(info).user_with("read")
        limit = _page(first)
        client = WireMarkers(markers.seq, markers.epoch) if markers else WireMarkers(0, 0)
        if client.seq < 0 or client.epoch < 0:
            raise DataGateError(ErrorCode.BAD_PARAMETER, name="markers", detail="must be >= 0")

        def read() -> ChangesPage:
            scope = selectors.reading_scope(
                user=user, tenant=tenant, collection=collection, view=view
            )
            answer = selectors.changes_after(
                scope=scope, client=client, limit=limit, snapshot=snapshot
            )
            return ChangesPage(
                changes=[Document.of(c) for c in answer.changes],
                reset=answer.reset,
                start_markers=Markers.of(answer.start),
                end_markers=Markers.of(answer.end),
                has_more=answer.has_more,
            )

        return await _run(read)()

    @strawberry.field(description="Topics of the tenant the caller can see.")
    async def topics(self, info: Info, tenant: str) -> list[Topic]:
        user = await _context(info).user_with("topics")

        def read() -> list[Topic]:
            caller = request_connect_user(user=user, tenant_slug=tenant, device=DEFAULT_DEVICE)
            infos = topic_selectors.topic_list(tenant=caller.tenant, user_id=caller.user_id)
            return [
                Topic(
                    name=i.name,
                    scope=i.scope,
                    owner=i.owner,
                    page_size=i.page_size,
                    last_offset=i.last_offset,
                    first_offset=i.first_offset,
                    message_count=i.message_count,
                )
                for i in infos
            ]

        return await _run(read)()

    @strawberry.field(description="A range of a topic's messages, in offset order.")
    async def messages(
        self,
        info: Info,
        tenant: str,
        topic: str,
        start: Long = 1,
        end: Long | None = None,
        first: int = 100,
        device: str = DEFAULT_DEVICE,
    ) -> MessagePage:
        user = await _context(info).user_with("topics")
        if start < 1:
            raise DataGateError(ErrorCode.BAD_PARAMETER, name="start", detail="must be >= 1")
        return await _run(_messages)(user, tenant, topic, start, end, _page(first), _device(device))


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Write a document. With `expectedRevision` the write happens only if the "
        "stored revision is that one (0: it must not exist); otherwise DG-4009."
    )
    async def put_document(
        self,
        info: Info,
        tenant: str,
        collection: str,
        id: str,
        body: JSON,
        expected_revision: int | None = None,
    ) -> Document:
        user = await _context(info).user_with("write")
        if expected_revision is not None and expected_revision < 0:
            raise DataGateError(
                ErrorCode.BAD_PARAMETER, name="expectedRevision", detail="must be >= 0"
            )
        stored = await _run(_put)(user, tenant, collection, id, body, expected_revision)
        return Document.of(stored)

    @strawberry.mutation(
        description="Delete a document (with `expectedRevision`: only at that revision). "
        "Deleting a missing one is fine."
    )
    async def delete_document(
        self,
        info: Info,
        tenant: str,
        collection: str,
        id: str,
        expected_revision: int | None = None,
    ) -> bool:
        user = await _context(info).user_with("write")
        return await _run(_delete)(user, tenant, collection, id, expected_revision)

    @strawberry.mutation(description="Publish messages (idempotent per messageId); their offsets.")
    async def publish(
        self,
        info: Info,
        tenant: str,
        topic: str,
        messages: list[MessageInput],
        device: str = DEFAULT_DEVICE,
    ) -> list[Long]:
        user = await _context(info).user_with("topics")
        return await _run(_publish)(user, tenant, topic, messages, _device(device))

    @strawberry.mutation(description="Commit an offset for (user, device); it never moves back.")
    async def commit_offset(
        self,
        info: Info,
        tenant: str,
        topic: str,
        offset: Long,
        device: str = DEFAULT_DEVICE,
    ) -> Long:
        user = await _context(info).user_with("topics")
        return await _run(_commit)(user, tenant, topic, offset, _device(device))


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every change of the collection (or of a view: documents a change takes "
        "out of it arrive as deletes) as the caller may read it: from now on, or after the "
        "sequence number `after` (a `seq` or marker seen before; above the purge horizon)."
    )
    async def document_changes(
        self,
        info: Info,
        tenant: str,
        collection: str,
        view: str | None = None,
        after: Long | None = None,
    ) -> AsyncGenerator[Document, None]:
        context = _context(info)
        user = await context.user_with("read")
        if after is not None and after < 0:
            raise DataGateError(ErrorCode.BAD_PARAMETER, name="after", detail="must be >= 0")
        scope = await _run(selectors.reading_scope)(
            user=user, tenant=tenant, collection=collection, view=view
        )
        async for change in live.document_changes(context, scope, after_seq=after):
            yield Document.of(change)

    @strawberry.subscription(
        description="A topic's messages as they are published, from `startFrom`: "
        '"latest" (default), "beginning", "committed" or an offset.'
    )
    async def topic_messages(
        self,
        info: Info,
        tenant: str,
        topic: str,
        start_from: str = "latest",
        device: str = DEFAULT_DEVICE,
    ) -> AsyncGenerator[Message, None]:
        context = _context(info)
        user = await context.user_with("topics")
        start: str | tuple[int, int | None]
        if start_from in ("latest", "beginning", "committed"):
            start = start_from
        elif start_from.isdigit() and len(start_from) <= 18 and int(start_from) >= 1:
            start = (int(start_from), None)
        else:
            raise DataGateError(
                ErrorCode.BAD_PARAMETER,
                name="startFrom",
                detail="latest, beginning, committed or an offset >= 1",
            )
        caller = await _run(request_connect_user)(
            user=user, tenant_slug=tenant, device=_device(device)
        )
        async for message in live.topic_messages(context, caller, topic=topic, start_from=start):
            yield Message.of(message)


class DataGateSchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Nothing: `graphqlapi.errors` logs the unexpected ones, with a reference; a refused
        request is the client's business, not the server log's."""


schema = DataGateSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    config=StrawberryConfig(scalar_map={Long: LONG}),
    extensions=[
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        DataGateErrors,
    ],
)
