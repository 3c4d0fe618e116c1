"""The console page of a collection's data views: list, create, change, delete, preview.

A thin shell over `replication.data_views`: the services decide access with `request.user`
(DG-4108 for someone who may not manage views) and write the audit entries.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods

from console.access import may_administer_collection, tenant_or_404
from console.views import _collection, _render, console_login_required
from core.errors import DataGateError, ErrorCode
from replication import data_views

PREVIEW_SIZE = 20


def _selector(raw: str) -> Any:
    try:
        return json.loads(raw or "{}")
    except ValueError as exc:
        raise DataGateError(
            ErrorCode.SELECTOR_INVALID, where="selector", detail=f"not JSON ({exc})"
        ) from exc


def _fields(raw: str) -> list[str]:
    return [f.strip() for f in raw.split(",") if f.strip()]


def _act(request: HttpRequest, tenant: Any, collection_name: str) -> str:
    action = request.POST.get("action", "")
    name = request.POST.get("name", "").strip()
    if action == "create":
        data_views.view_create(
            actor=request.user,
            tenant=tenant,
            collection_name=collection_name,
            name=name,
            selector=_selector(request.POST.get("selector", "")),
            fields=_fields(request.POST.get("fields", "")),
            description=request.POST.get("description", ""),
        )
        return f"Created view {name}."
    view = data_views.view_get(
        actor=request.user, tenant=tenant, collection_name=collection_name, name=name
    )
    if action == "update":
        data_views.view_update(
            actor=request.user,
            view=view,
            selector=_selector(request.POST.get("selector", "")),
            fields=_fields(request.POST.get("fields", "")),
            description=request.POST.get("description", ""),
        )
        return f"Changed view {name}."
    if action == "delete":
        data_views.view_delete(actor=request.user, view=view)
        return f"Deleted view {name}."
    raise DataGateError(ErrorCode.VIEW_INVALID, view=name, detail=f"unknown action {action!r}")


@console_login_required
@require_http_methods(["GET", "POST"])
def data_views_page(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    coll = _collection(tenant_access, collection)
    may_admin = may_administer_collection(request, tenant_access, coll)
    form: dict[str, str] = {}
    if request.method == "POST":
        if not may_admin:
            raise PermissionDenied("Only the collection's admins manage its views.")
        try:
            done = _act(request, tenant_access.tenant, coll.name)
        except DataGateError as exc:
            messages.error(request, exc.text)
            form = {k: request.POST.get(k, "") for k in ("name", "selector", "fields")}
        else:
            messages.success(request, done)
            return redirect(
                "console:data_views", tenant=tenant_access.tenant.slug, collection=coll.name
            )
    views = data_views.views_list(
        actor=request.user, tenant=tenant_access.tenant, collection_name=coll.name
    )
    rows = [
        {
            "view": v,
            "selector": json.dumps(v.selector, ensure_ascii=False),
            "fields": ", ".join(v.fields),
        }
        for v in views
    ]
    preview_name = request.GET.get("preview", "")
    preview: list[Any] | None = None
    if preview_name:
        try:
            found = data_views.view_get(
                actor=request.user,
                tenant=tenant_access.tenant,
                collection_name=coll.name,
                name=preview_name,
            )
            preview, _ = data_views.view_documents_page(
                actor=request.user, view=found, after=None, limit=PREVIEW_SIZE
            )
        except DataGateError as exc:
            messages.error(request, exc.text)
    return _render(
        request,
        "console/data_views.html",
        {
            "access": tenant_access,
            "tenant": tenant_access.tenant,
            "collection": coll,
            "rows": rows,
            "may_admin": may_admin,
            "form": form,
            "preview_name": preview_name,
            "preview": preview,
            "section": "collections",
        },
    )
