"""The HTTP API's views: thin shells over the selectors and the services.

The token's scope for each method is checked by `api.permissions` (the one API module that
asks `accounts.access`); what the caller may read of a collection, and whether they may write
it, comes from the reads and writes for an acting user (`replication.selectors`,
`replication.services.documents`), the same functions GraphQL calls.

Every write goes through `replication.services` (a seq, the journal, the doorbell, live
feeds), exactly like a replica's push. Reads apply the same per-session read filter as the
websocket pull. Errors are raised as `DataGateError` and rendered by `api.errors`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import selectors
from api.schema import (
    CHANGES_PAGE,
    COLLECTION_PARAM,
    DOC_ID_PARAM,
    DOCUMENT,
    DOCUMENT_BODY,
    DOCUMENT_PAGE,
    LIMIT_PARAM,
    SEARCH_RESULTS,
    TENANT_PARAM,
    CollectionListSerializer,
    CollectionStatsSerializer,
    TenantListSerializer,
)
from core import metrics
from core.door import printable, unencodable
from core.errors import DataGateError, ErrorCode
from replication.changes import Version, version_to_wire
from replication.models import Collection, Document
from replication.protocol.conflicts import WRITE
from replication.protocol.markers import Markers, PullStart, pull_start
from replication.protocol.messages import encode_served, served_feed
from replication.selectors import (
    changes_since,
    collection_for_reader,
    collection_position,
    collection_read_filter,
    collections_visible,
    document_readable,
    feed_from_changes,
)
from replication.services.documents import collection_for_writer, document_delete, document_put
from replication.services.events import unservable_record
from search.selectors import search_documents

DEFAULT_PAGE = 100
MAX_PAGE = 1000
TRUE_WORDS = {"1", "true", "yes"}
FALSE_WORDS = {"0", "false", "no", ""}


# --- parameter parsing ---------------------------------------------------------------------


def int_param(
    request: Request, name: str, *, default: int, minimum: int, maximum: int | None = None
) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DataGateError(ErrorCode.BAD_PARAMETER, name=name, detail="not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise DataGateError(ErrorCode.BAD_PARAMETER, name=name, detail=f"must be {bounds}")
    return value


def bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise DataGateError(ErrorCode.BAD_PARAMETER, name=name, detail="use true or false")


def if_match_revision(request: Request) -> int | None:
    """The revision an `If-Match` header expects (`"3"`, `3` or `W/"3"`), or None."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise DataGateError(
            ErrorCode.BAD_PARAMETER, name="If-Match", detail="must be a document revision"
        )
    return int(text)


def origin_for(request: Request) -> str:
    """The `_origin` of changes written over HTTP: never a replica's id."""
    return f"api:{request.user.get_username()}"[:128]


def wire_document(doc: Document) -> dict[str, Any]:
    return version_to_wire(
        Version(doc.doc_id, WRITE, doc.modified, doc.revision, doc.origin, doc.body)
    )


def served(feed: dict[str, Any], request: Request, collection: Collection) -> dict[str, Any]:
    """`feed` without stored documents that cannot be encoded, recorded as DG-5005 (one bad
    row never makes a page answer 500: docs/decisions/0013)."""
    _, skipped = encode_served({"feed": feed})
    if not skipped:
        return feed
    unservable_record(
        collection_id=collection.pk,
        skipped=skipped,
        via=f"{request.method} {request.path}"[:200],
        user_id=request.user.pk,
    )
    return served_feed(feed)[0]


# --- resolving the URL's tenant and collection for the caller -------------------------------


def readable_collection(request: Request, tenant_slug: str, name: str) -> Collection:
    return collection_for_reader(user=request.user, tenant_slug=tenant_slug, name=name)


def writable_collection(request: Request, tenant_slug: str, name: str) -> Collection:
    """The collection the caller may write, created on first write if they may create it."""
    return collection_for_writer(user=request.user, tenant_slug=tenant_slug, name=name)


# --- tenants and collections ----------------------------------------------------------------


class TenantListView(APIView):
    @extend_schema(
        operation_id="tenants_list",
        summary="Tenants the caller belongs to",
        responses={200: TenantListSerializer},
    )
    def get(self, request: Request) -> Response:
        tenants = [
            {"slug": tenant.slug, "name": tenant.name, "role": role}
            for tenant, role in selectors.tenants_visible(user=request.user)
        ]
        return Response({"tenants": tenants})


class CollectionListView(APIView):
    @extend_schema(
        operation_id="collections_list",
        summary="Collections of a tenant the caller may read",
        parameters=[TENANT_PARAM],
        responses={200: CollectionListSerializer},
    )
    def get(self, request: Request, tenant: str) -> Response:
        collections = [
            {"name": c.name, "markers": Markers(c.last_seq, c.epoch).to_wire()}
            for c in collections_visible(user=request.user, slug=tenant)
        ]
        return Response({"collections": collections})


class CollectionStatsView(APIView):
    @extend_schema(
        operation_id="collections_stats",
        summary="A collection's markers and counts",
        parameters=[TENANT_PARAM, COLLECTION_PARAM],
        responses={200: CollectionStatsSerializer},
    )
    def get(self, request: Request, tenant: str, collection: str) -> Response:
        found = readable_collection(request, tenant, collection)
        return Response(selectors.collection_stats(collection=found))


# --- documents ------------------------------------------------------------------------------


class DocumentListView(APIView):
    @extend_schema(
        operation_id="documents_list",
        summary="Live documents, ordered by id, a page at a time",
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            LIMIT_PARAM,
            OpenApiParameter(
                "after",
                str,
                required=False,
                description="the `next` of the previous page: documents with a greater id",
            ),
            OpenApiParameter(
                "filter",
                str,
                many=True,
                required=False,
                description=(
                    "`field=value` (repeatable, all must match; dots reach into objects). "
                    "The value is read as JSON when it parses (numbers, true, false, null, "
                    '"quoted"), as a plain string otherwise.'
                ),
            ),
        ],
        responses={200: DOCUMENT_PAGE},
    )
    def get(self, request: Request, tenant: str, collection: str) -> Response:
        found = readable_collection(request, tenant, collection)
        limit = int_param(request, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        after = request.query_params.get("after")
        filters = selectors.document_filters(request.query_params.getlist("filter"))
        page = selectors.documents_page(
            collection_id=found.pk, after=after, limit=limit, filters=filters
        )
        allowed = collection_read_filter(user=request.user, collection=found)
        documents = [wire_document(d) for d in page if allowed is None or allowed(d.doc_id)]
        documents = served({"changeSet": documents}, request, found)["changeSet"]
        next_after = page[-1].doc_id if len(page) == limit else None
        return Response({"documents": documents, "next": next_after})


class DocumentView(APIView):
    @extend_schema(
        operation_id="documents_get",
        summary="One document (its revision is the ETag)",
        parameters=[TENANT_PARAM, COLLECTION_PARAM, DOC_ID_PARAM],
        responses={200: DOCUMENT},
    )
    def get(self, request: Request, tenant: str, collection: str, doc_id: str) -> Response:
        found = readable_collection(request, tenant, collection)
        if unencodable(doc_id) is not None or "\x00" in doc_id:  # cannot be stored: no query
            raise DataGateError(ErrorCode.NOT_FOUND, what=f"document {doc_id[:64]!r}")
        doc = selectors.document_get(collection_id=found.pk, doc_id=doc_id)
        if doc is None or not document_readable(user=request.user, collection=found, doc_id=doc_id):
            raise DataGateError(ErrorCode.NOT_FOUND, what=f"document {doc_id[:64]!r}")
        wire = wire_document(doc)
        reason = unencodable(wire)
        if reason is not None:
            raise DataGateError(
                ErrorCode.UNSERVABLE_SKIPPED, doc_id=printable(doc_id), reason=reason
            )
        return Response(wire, headers={"ETag": f'"{doc.revision}"'})

    @extend_schema(
        operation_id="documents_put",
        summary="Write a document (conditional with If-Match or `_revision`)",
        description=(
            "Writes through the same service as a replica's push: the change gets a sequence "
            "number, lands in the journal and reaches live replicas as a feed. With `If-Match: "
            '"N"` or `_revision: N` in the body, the write happens only if the stored revision '
            "is N (0: must not exist); otherwise DG-4009 (409)."
        ),
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            DOC_ID_PARAM,
            OpenApiParameter(
                "If-Match",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description='the expected revision, e.g. "3"',
            ),
        ],
        request={"application/json": DOCUMENT_BODY},
        responses={200: DOCUMENT},
    )
    def put(self, request: Request, tenant: str, collection: str, doc_id: str) -> Response:
        found = writable_collection(request, tenant, collection)
        body = request.data
        if not isinstance(body, dict):
            raise DataGateError(ErrorCode.BAD_BODY, detail="a document must be a JSON object")
        expected = if_match_revision(request)
        fields = dict(body)
        if "_id" in fields and fields.pop("_id") != doc_id:
            raise DataGateError(ErrorCode.BAD_BODY, detail="_id does not match the URL")
        if "_revision" in fields:
            in_body = fields.pop("_revision")
            if isinstance(in_body, bool) or not isinstance(in_body, int) or in_body < 0:
                raise DataGateError(ErrorCode.BAD_BODY, detail="_revision must be an integer >= 0")
            if expected is not None and expected != in_body:
                raise DataGateError(ErrorCode.BAD_BODY, detail="_revision and If-Match disagree")
            expected = in_body
        fields.pop("_modified", None)
        fields.pop("_origin", None)
        result = document_put(
            actor=request.user,
            collection_id=found.pk,
            doc_id=doc_id,
            body=fields,
            origin=origin_for(request),
            expected_revision=expected,
        )
        metrics.push_record(applied=result.applied, rejected=len(result.rejected))
        doc = selectors.document_get(collection_id=found.pk, doc_id=doc_id)
        if doc is None:  # the write lost to a newer change made meanwhile
            raise DataGateError(
                ErrorCode.REVISION_CONFLICT, doc_id=doc_id, expected=expected, actual=0
            )
        return Response(wire_document(doc), headers={"ETag": f'"{doc.revision}"'})

    @extend_schema(
        operation_id="documents_delete",
        summary="Delete a document (conditional with If-Match); deleting a missing one is fine",
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            DOC_ID_PARAM,
            OpenApiParameter(
                "If-Match",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description='the expected revision, e.g. "3"',
            ),
        ],
        responses={204: None},
    )
    def delete(self, request: Request, tenant: str, collection: str, doc_id: str) -> Response:
        user = request.user
        found = collection_for_reader(user=user, tenant_slug=tenant, name=collection)
        result = document_delete(
            actor=user,
            collection_id=found.pk,
            doc_id=doc_id,
            origin=origin_for(request),
            expected_revision=if_match_revision(request),
        )
        metrics.push_record(applied=result.applied, rejected=len(result.rejected))
        return Response(status=204)


# --- changes --------------------------------------------------------------------------------


class ChangesView(APIView):
    @extend_schema(
        operation_id="changes_list",
        summary="Changes after a marker, in sequence order (the websocket pull, over HTTP)",
        description=(
            "Send the markers you stored (zeros on first sync); store the answer's `endMarkers` "
            "and ask again while `hasMore`. The markers are the websocket protocol's: a client "
            "can switch between this and a websocket pull at any page. When `reset` is true a "
            "full snapshot follows; follow `next` (it carries `snapshot=true`) to the end."
        ),
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            OpenApiParameter("collectionMarker", int, required=False, description="stored"),
            OpenApiParameter("tombstoneMarker", int, required=False, description="stored"),
            LIMIT_PARAM,
            OpenApiParameter(
                "snapshot",
                bool,
                required=False,
                description="continuing a snapshot that began with reset=true",
            ),
        ],
        responses={200: CHANGES_PAGE},
    )
    def get(self, request: Request, tenant: str, collection: str) -> Response:
        found = readable_collection(request, tenant, collection)
        chunk = int(settings.DATAGATE["CHUNK_SIZE"])
        limit = int_param(request, "limit", default=chunk, minimum=1, maximum=max(chunk, 1))
        client = Markers(
            int_param(request, "collectionMarker", default=0, minimum=0),
            int_param(request, "tombstoneMarker", default=0, minimum=0),
        )
        continuing_snapshot = bool_param(request, "snapshot")
        last_seq, purge_seq = collection_position(collection_id=found.pk)
        epoch = found.epoch
        start = pull_start(client=client, last_seq=last_seq, purge_seq=purge_seq, epoch=epoch)
        reset = False
        after_seq = client.seq
        if continuing_snapshot and client.epoch == epoch and client.seq <= last_seq:
            start = PullStart.FROM_MARKER
        elif start is not PullStart.FROM_MARKER:
            reset, after_seq, continuing_snapshot = True, 0, True
        changes = changes_since(
            collection_id=found.pk, after_seq=after_seq, limit=limit, up_to_seq=last_seq
        )
        has_more = len(changes) == limit and changes[-1].seq < last_seq
        end = Markers(changes[-1].seq if has_more else last_seq, epoch)
        allowed = collection_read_filter(user=request.user, collection=found)
        if allowed is not None:
            changes = [c for c in changes if allowed(c.doc_id)]
        next_url = None
        if has_more:
            query: dict[str, int | str] = {
                "collectionMarker": end.seq,
                "tombstoneMarker": end.epoch,
                "limit": limit,
            }
            if continuing_snapshot:
                query["snapshot"] = "true"
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(query)}")
        return Response(
            {
                "feed": served(feed_from_changes(changes), request, found),
                "reset": reset,
                "startMarkers": Markers(after_seq, epoch).to_wire(),
                "endMarkers": end.to_wire(),
                "hasMore": has_more,
                "next": next_url,
            }
        )


# --- search ---------------------------------------------------------------------------------


class SearchView(APIView):
    @extend_schema(
        operation_id="documents_search",
        summary="Full-text search over the collection's indexed fields, best first",
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            OpenApiParameter("q", str, required=True, description="words; all must match"),
            OpenApiParameter("limit", int, required=False, description="at most 100"),
            OpenApiParameter("offset", int, required=False),
        ],
        responses={200: SEARCH_RESULTS},
    )
    def get(self, request: Request, tenant: str, collection: str) -> Response:
        found = readable_collection(request, tenant, collection)
        limit = int_param(request, "limit", default=20, minimum=1, maximum=100)
        offset = int_param(request, "offset", default=0, minimum=0, maximum=10_000)
        query = request.query_params.get("q", "")
        if len(query) > 1000:
            raise DataGateError(ErrorCode.BAD_PARAMETER, name="q", detail="too long")
        hits = search_documents(
            collection_id=found.pk,
            query=query,
            limit=limit,
            offset=offset,
            read_filter=collection_read_filter(user=request.user, collection=found),
        )
        return Response(
            {
                "results": [
                    {
                        "_id": hit.doc_id,
                        "score": hit.score,
                        "highlight": hit.highlight,
                        "document": hit.document,
                    }
                    for hit in hits
                ],
                "nextOffset": offset + limit if len(hits) == limit else None,
            }
        )
