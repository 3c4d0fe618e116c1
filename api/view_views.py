"""The HTTP API of data views: manage them (admins) and read documents through them.

Thin shells over `replication.data_views`, which decides access with the acting user
(docs/protocol.md, "Views").
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
from api.schema import CHANGES_PAGE, COLLECTION_PARAM, DOCUMENT_PAGE, LIMIT_PARAM, TENANT_PARAM
from api.views import (
    DEFAULT_PAGE,
    MAX_PAGE,
    bool_param,
    int_param,
    served,
    wire_document,
)
from core.errors import DataGateError, ErrorCode
from replication import data_views
from replication.models import DataView
from replication.protocol.markers import Markers, PullStart, pull_start
from replication.selectors import collection_position, collection_read_filter

VIEW_PARAM = OpenApiParameter("view", str, OpenApiParameter.PATH, description="the view's name")
VIEW_BODY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "selector": {"type": "object", "description": "a Mango selector"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
    },
    "required": ["selector"],
}


def view_wire(view: DataView) -> dict[str, Any]:
    return {
        "name": view.name,
        "selector": view.selector,
        "fields": view.fields,
        "description": view.description,
        "version": view.version,
    }


def _tenant(slug: str) -> Any:
    tenant = selectors.tenant_find(slug=slug)
    if tenant is None:
        raise DataGateError(ErrorCode.NOT_FOUND, what=f"tenant {slug[:64]!r}")
    return tenant


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise DataGateError(ErrorCode.BAD_BODY, detail="a view must be a JSON object")
    return dict(request.data)


class ViewListView(APIView):
    @extend_schema(
        operation_id="views_list",
        summary="The collection's data views",
        parameters=[TENANT_PARAM, COLLECTION_PARAM],
        responses={200: {"type": "object"}},
    )
    def get(self, request: Request, tenant: str, collection: str) -> Response:
        views = data_views.views_list(
            actor=request.user, tenant=_tenant(tenant), collection_name=collection
        )
        return Response({"views": [view_wire(v) for v in views]})

    @extend_schema(
        operation_id="views_create",
        summary="Create a data view (tenant admins, collection administrators)",
        parameters=[TENANT_PARAM, COLLECTION_PARAM],
        request={"application/json": VIEW_BODY},
        responses={201: {"type": "object"}},
    )
    def post(self, request: Request, tenant: str, collection: str) -> Response:
        body = _body(request)
        view = data_views.view_create(
            actor=request.user,
            tenant=_tenant(tenant),
            collection_name=collection,
            name=body.get("name", ""),
            selector=body.get("selector"),
            fields=body.get("fields"),
            description=body.get("description", ""),
        )
        return Response(view_wire(view), status=201)


def _view(request: Request, tenant: str, collection: str, name: str) -> DataView:
    return data_views.view_get(
        actor=request.user, tenant=_tenant(tenant), collection_name=collection, name=name
    )


class ViewDetailView(APIView):
    @extend_schema(
        operation_id="views_get",
        summary="One data view",
        parameters=[TENANT_PARAM, COLLECTION_PARAM, VIEW_PARAM],
        responses={200: {"type": "object"}},
    )
    def get(self, request: Request, tenant: str, collection: str, view: str) -> Response:
        return Response(view_wire(_view(request, tenant, collection, view)))

    @extend_schema(
        operation_id="views_update",
        summary="Change a data view's definition",
        parameters=[TENANT_PARAM, COLLECTION_PARAM, VIEW_PARAM],
        request={"application/json": VIEW_BODY},
        responses={200: {"type": "object"}},
    )
    def put(self, request: Request, tenant: str, collection: str, view: str) -> Response:
        body = _body(request)
        found = data_views.view_update(
            actor=request.user,
            view=_view(request, tenant, collection, view),
            selector=body.get("selector"),
            fields=body.get("fields"),
            description=body.get("description"),
        )
        return Response(view_wire(found))

    @extend_schema(
        operation_id="views_delete",
        summary="Delete a data view",
        parameters=[TENANT_PARAM, COLLECTION_PARAM, VIEW_PARAM],
        responses={204: None},
    )
    def delete(self, request: Request, tenant: str, collection: str, view: str) -> Response:
        data_views.view_delete(actor=request.user, view=_view(request, tenant, collection, view))
        return Response(status=204)


class ViewDocumentsView(APIView):
    @extend_schema(
        operation_id="views_documents",
        summary="Documents in the view (and readable by the caller), by id, a page at a time",
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            VIEW_PARAM,
            LIMIT_PARAM,
            OpenApiParameter("after", str, required=False, description="the previous `next`"),
        ],
        responses={200: DOCUMENT_PAGE},
    )
    def get(self, request: Request, tenant: str, collection: str, view: str) -> Response:
        found = _view(request, tenant, collection, view)
        limit = int_param(request, "limit", default=DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)
        page, more = data_views.view_documents_page(
            actor=request.user, view=found, after=request.query_params.get("after"), limit=limit
        )
        documents = [wire_document(d) for d in page]
        documents = served({"changeSet": documents}, request, found.collection)["changeSet"]
        next_after = page[-1].doc_id if more and page else None
        return Response({"documents": documents, "next": next_after})


class ViewChangesView(APIView):
    @extend_schema(
        operation_id="views_changes",
        summary="Changes through the view after a marker (the websocket pull of a view)",
        description=(
            "As `.../changes/`, through the view: documents in it, and deletes and documents a "
            "change took out of it as tombstones. The markers are the view's (section 12.1)."
        ),
        parameters=[
            TENANT_PARAM,
            COLLECTION_PARAM,
            VIEW_PARAM,
            OpenApiParameter("collectionMarker", int, required=False, description="stored"),
            OpenApiParameter("tombstoneMarker", int, required=False, description="stored"),
            LIMIT_PARAM,
            OpenApiParameter("snapshot", bool, required=False, description="continuing a snapshot"),
        ],
        responses={200: CHANGES_PAGE},
    )
    def get(self, request: Request, tenant: str, collection: str, view: str) -> Response:
        found = _view(request, tenant, collection, view)
        coll = found.collection
        chunk = int(settings.DATAGATE["CHUNK_SIZE"])
        limit = int_param(request, "limit", default=chunk, minimum=1, maximum=max(chunk, 1))
        client = Markers(
            int_param(request, "collectionMarker", default=0, minimum=0),
            int_param(request, "tombstoneMarker", default=0, minimum=0),
        )
        continuing_snapshot = bool_param(request, "snapshot")
        last_seq, purge_seq = collection_position(collection_id=coll.pk)
        epoch = data_views.view_epoch(collection_epoch=coll.epoch, view=found)
        start = pull_start(client=client, last_seq=last_seq, purge_seq=purge_seq, epoch=epoch)
        reset = False
        after_seq = client.seq
        if continuing_snapshot and client.epoch == epoch and client.seq <= last_seq:
            start = PullStart.FROM_MARKER
        elif start is not PullStart.FROM_MARKER:
            reset, after_seq, continuing_snapshot = True, 0, True
        elif client.is_zero:
            continuing_snapshot = True  # a first sync holds nothing to remove, on every page
        selector = data_views.selector_bound(view=found, user=request.user, tenant=coll.tenant)
        page = data_views.view_change_page(
            collection_id=coll.pk,
            selector=selector,
            after_seq=after_seq,
            limit=limit,
            up_to_seq=last_seq,
            fresh=continuing_snapshot,
        )
        has_more = page.covered < last_seq
        end = Markers(page.covered, epoch)
        allowed = collection_read_filter(user=request.user, collection=coll)
        feed = data_views.view_feed(page.changes, selector=selector, read_filter=allowed)
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
                "feed": served(feed, request, coll),
                "reset": reset,
                "startMarkers": Markers(after_seq, epoch).to_wire(),
                "endMarkers": end.to_wire(),
                "hasMore": has_more,
                "next": next_url,
            }
        )
