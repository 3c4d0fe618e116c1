"""The HTTP API of data views: manage them (admins) and read documents through them.

Thin shells over `replication.data_views`, which decides access with the acting user
(docs/protocol.md, "Views").
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import selectors
from api.schema import COLLECTION_PARAM, DOCUMENT_PAGE, LIMIT_PARAM, TENANT_PARAM
from api.views import DEFAULT_PAGE, MAX_PAGE, int_param, served, wire_document
from replication import data_views
from replication.models import DataView
from replication.protocol.errors import DataGateError, ErrorCode

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
