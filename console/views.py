"""The console's pages: thin views over `console.selectors`, `replication.services` and
`console.access` (the console's access module: the one console module that asks
`accounts.access`).

Who sees what (every decision is asked through `console.access`):
- a tenant the user has no role in does not exist for them (404, like the sync protocol);
- readers see everything of their tenants and can do nothing (no buttons; POST answers 403);
- writers may also create, edit and delete documents;
- admins may also disconnect replicas and revoke their tokens.

Documents go through the same door as the websocket and the HTTP API (docs/access.md, "One
door"): the user's `document_policy` for the collection filters the list and search; the
pages of a document the user may not read (its page with its history, its edit form) answer
404, stored or not; a change the user may not make (create, edit, delete) answers 403, stored
or not (the form shows why; the write service itself refuses it, for the acting user).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.services import access_tokens_revoke
from console import selectors
from console.access import (
    TenantAccess,
    collection_policy,
    document_readable_or_404,
    navigation_tenants,
    server_admin_or_404,
    tenant_or_404,
    topic_visible_or_404,
)
from console.dashboard import dashboard_data, replicas_data
from console.errorsdoc import errors_doc_html
from console.forms import DocumentForm, DocumentSearchForm, ErrorFilterForm
from core.door import display_json
from core.errors import DataGateError, ErrorCode
from replication.doorbell import replica_disconnect_request
from replication.maintenance import (
    journal_prune_all,
    maintenance_run,
    maintenance_runs_latest,
    tombstones_collect_all,
)
from replication.models import Collection, MaintenanceJob
from replication.services.documents import document_delete, document_put
from replication.services.events import error_event_record
from search.selectors import search_documents
from topics.models import Topic

LOGIN_URL = "console:login"
PAGE_SIZE = 50

console_login_required = login_required(login_url=LOGIN_URL)


def _collection(access: TenantAccess, name: str) -> Collection:
    collection = Collection.objects.filter(tenant=access.tenant, name=name).first()
    if collection is None:
        raise Http404("No such collection.")
    return collection


# A refusal by the access door (the collection's write right or a key rule): 403.
ACCESS_REFUSALS = frozenset(
    {ErrorCode.READ_ONLY, ErrorCode.KEY_WRITE_DENIED, ErrorCode.KEY_DELETE_DENIED}
)


def _page(request: HttpRequest, items: Any) -> Page:
    return Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))


def _render(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    context.setdefault("nav_tenants", navigation_tenants(user=request.user))
    return render(request, template, context, status=status)


def _origin(request: HttpRequest) -> str:
    return f"console:{request.user.get_username()}"[:128]


# --- home and dashboards ------------------------------------------------------------------


@require_GET
def root(request: HttpRequest) -> HttpResponse:
    return redirect("console:index")


@console_login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    roles = navigation_tenants(user=request.user)
    if len(roles) == 1:
        return redirect("console:dashboard", tenant=next(iter(roles)).slug)
    return _render(request, "console/index.html", {"nav_tenants": roles})


@console_login_required
@require_GET
def dashboard(request: HttpRequest, tenant: str, collection: str | None = None) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    if collection is not None:
        _collection(access, collection)
    live_path = f"/ws/console/{access.tenant.slug}/" + (f"{collection}/" if collection else "")
    context = dashboard_data(tenant=access.tenant, collection_name=collection)
    context.update({"access": access, "live_path": live_path, "section": "dashboard"})
    return _render(request, "console/dashboard.html", context)


# --- replicas -----------------------------------------------------------------------------


@console_login_required
@require_GET
def replicas(request: HttpRequest, tenant: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    context = replicas_data(tenant=access.tenant, params=request.GET)
    query = request.GET.urlencode()
    context.update(
        {
            "access": access,
            "live_path": f"/ws/console/{access.tenant.slug}/?"
            + urlencode({"view": "replicas", "query": query}),
            "section": "replicas",
        }
    )
    return _render(request, "console/replicas.html", context)


def _replica_or_404(access: TenantAccess, pk: int) -> Any:
    replica = selectors.replica_get(tenant=access.tenant, replica_pk=pk)
    if replica is None:
        raise Http404("No such replica.")
    return replica


@console_login_required
@require_GET
def replica_detail(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    replica = _replica_or_404(access, pk)
    errors = selectors.error_event_list(
        tenant=access.tenant, filters=selectors.ErrorFilters(replica=replica.pk)
    )[:50]
    return _render(
        request,
        "console/replica.html",
        {
            "access": access,
            "tenant": access.tenant,
            "replica": replica,
            "sessions": selectors.replica_sessions(replica=replica),
            "errors": list(errors),
            "applications": selectors.user_applications_with_tokens(user=replica.user)
            if access.can_admin
            else [],
            "section": "replicas",
        },
    )


@console_login_required
@require_POST
def replica_disconnect(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    if not access.can_admin:
        raise PermissionDenied("Only tenant admins may disconnect replicas.")
    replica = _replica_or_404(access, pk)
    if replica_disconnect_request(replica_pk=replica.pk, reason="disconnected from the console"):
        messages.success(request, f"Asked replica {replica.replica_id} to disconnect.")
    else:
        messages.error(request, "The channel layer refused the request; try again.")
    return redirect("console:replica", tenant=access.tenant.slug, pk=replica.pk)


@console_login_required
@require_POST
def replica_revoke(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    if not access.can_admin:
        raise PermissionDenied("Only tenant admins may revoke tokens.")
    replica = _replica_or_404(access, pk)
    raw_app = request.POST.get("application", "")
    application_id = int(raw_app) if raw_app.isdigit() else None
    revoked = access_tokens_revoke(
        user=replica.user,
        application_id=application_id,
        actor=request.user,
        tenant=access.tenant,
    )
    replica_disconnect_request(replica_pk=replica.pk, reason="token revoked from the console")
    messages.success(
        request,
        f"Revoked {revoked} access token(s) of {replica.user.get_username()} "
        "and asked the replica to disconnect.",
    )
    return redirect("console:replica", tenant=access.tenant.slug, pk=replica.pk)


# --- documents ----------------------------------------------------------------------------


@console_login_required
@require_GET
def documents(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    coll = _collection(access, collection)
    policy = collection_policy(request, access, coll)
    form = DocumentSearchForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    search_error = ""
    hits = None
    if data.get("q"):  # full-text search, as the HTTP API's (search/selectors.py)
        try:
            hits = search_documents(
                collection_id=coll.pk,
                query=data["q"],
                limit=PAGE_SIZE,
                read_filter=policy.read_filter,
            )
        except DataGateError as exc:
            search_error = exc.text
    try:
        found = selectors.document_search(
            collection=coll,
            id_contains=data.get("id") or "",
            field=(data.get("field") or "").strip(),
            value=data.get("value") or "",
            read_filter=policy.read_filter,
        )
        page = _page(request, found)
    except selectors.BadSearch as exc:
        search_error = str(exc)
        page = _page(request, [])
    return _render(
        request,
        "console/documents.html",
        {
            "access": access,
            "tenant": access.tenant,
            "collection": coll,
            "form": form if form.is_bound else DocumentSearchForm(),
            "page": page,
            "search_error": search_error,
            "hits": hits,
            "may_create": policy.can_write,
            "section": "documents",
        },
    )


def _document_url(view: str, access: TenantAccess, coll: Collection, doc_id: str) -> str:
    url = reverse(view, kwargs={"tenant": access.tenant.slug, "collection": coll.name})
    return f"{url}?{urlencode({'id': doc_id})}"


@console_login_required
@require_GET
def document_detail(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    coll = _collection(access, collection)
    doc_id = request.GET.get("id", "")
    policy = collection_policy(request, access, coll)
    document_readable_or_404(policy, doc_id)
    document = selectors.document_get(collection=coll, doc_id=doc_id)
    tombstone = None if document else selectors.tombstone_get(collection=coll, doc_id=doc_id)
    history = selectors.document_history(collection=coll, doc_id=doc_id)
    if document is None and tombstone is None and not history:
        raise Http404("No such document.")
    return _render(
        request,
        "console/document.html",
        {
            "access": access,
            "tenant": access.tenant,
            "collection": coll,
            "doc_id": doc_id,
            "document": document,
            "tombstone": tombstone,
            "history": history,
            "may_edit": policy.may_write(doc_id),
            "may_delete": policy.may_delete(doc_id),
            "edit_url": _document_url("console:document_edit", access, coll, doc_id),
            "section": "documents",
        },
    )


def _save_document(
    request: HttpRequest, access: TenantAccess, coll: Collection, form: DocumentForm
) -> HttpResponse | int:
    """Write the form's document through the service, for the user; on a refusal, a form
    error and the status to render the form with (403 for the access door, else 200)."""
    doc_id = form.cleaned_data["doc_id"]
    try:
        document_put(
            actor=request.user,
            collection_id=coll.pk,
            doc_id=doc_id,
            body=form.cleaned_data["body"],
            origin=_origin(request),
            expected_revision=form.cleaned_data.get("expected_revision"),
            audit=True,
        )
    except DataGateError as exc:
        error_event_record(
            error=exc,
            user_id=request.user.pk,
            tenant=access.tenant.slug,
            collection=coll.name,
            context={"via": "console", "doc_id": doc_id[:128]},
        )
        form.add_error(None, exc.text)
        return 403 if exc.error in ACCESS_REFUSALS else 200
    messages.success(request, f"Saved {doc_id}; it replicates to every live replica.")
    return redirect(_document_url("console:document", access, coll, doc_id))


@console_login_required
@require_http_methods(["GET", "POST"])
def document_new(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    coll = _collection(access, collection)
    if not collection_policy(request, access, coll).can_write:
        raise PermissionDenied("Readers cannot create documents.")
    form = DocumentForm(request.POST or None, initial={"expected_revision": 0})
    status = 200
    if request.method == "POST" and form.is_valid():
        saved = _save_document(request, access, coll, form)
        if isinstance(saved, HttpResponse):
            return saved
        status = saved
    return _render(
        request,
        "console/document_form.html",
        {
            "access": access,
            "tenant": access.tenant,
            "collection": coll,
            "form": form,
            "creating": True,
            "section": "documents",
        },
        status=status,
    )


@console_login_required
@require_http_methods(["GET", "POST"])
def document_edit(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    coll = _collection(access, collection)
    doc_id = request.GET.get("id", "")
    policy = collection_policy(request, access, coll)
    document_readable_or_404(policy, doc_id)
    if not policy.may_write(doc_id):
        raise PermissionDenied("You may not edit this document.")
    document = selectors.document_get(collection=coll, doc_id=doc_id)
    if document is None:
        raise Http404("No such document.")
    status = 200
    if request.method == "POST":
        data = request.POST.copy()
        data["doc_id"] = doc_id  # the id is not editable; the URL names the document
        form = DocumentForm(data)
        if form.is_valid():
            saved = _save_document(request, access, coll, form)
            if isinstance(saved, HttpResponse):
                return saved
            status = saved
    else:
        form = DocumentForm(
            initial={
                "doc_id": doc_id,
                "body": display_json(document.body, indent=2),
                "expected_revision": document.revision,
            }
        )
    form.fields["doc_id"].disabled = True
    return _render(
        request,
        "console/document_form.html",
        {
            "access": access,
            "tenant": access.tenant,
            "collection": coll,
            "form": form,
            "document": document,
            "creating": False,
            "section": "documents",
        },
        status=status,
    )


@console_login_required
@require_POST
def document_remove(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    coll = _collection(access, collection)
    doc_id = request.POST.get("id", "")
    policy = collection_policy(request, access, coll)
    if not policy.can_write:
        raise PermissionDenied("Readers cannot delete documents.")
    raw_revision = request.POST.get("expected_revision", "")
    try:
        document_delete(
            actor=request.user,
            collection_id=coll.pk,
            doc_id=doc_id,
            origin=_origin(request),
            expected_revision=int(raw_revision) if raw_revision.isdigit() else None,
            audit=True,
        )
    except DataGateError as exc:
        error_event_record(
            error=exc,
            user_id=request.user.pk,
            tenant=access.tenant.slug,
            collection=coll.name,
            context={"via": "console", "doc_id": doc_id[:128]},
        )
        if exc.error in ACCESS_REFUSALS:
            raise PermissionDenied(exc.text) from None
        messages.error(request, exc.text)
        return redirect(_document_url("console:document", access, coll, doc_id))
    messages.success(request, f"Deleted {doc_id}; the delete replicates to every live replica.")
    return redirect("console:documents", tenant=access.tenant.slug, collection=coll.name)


# --- errors -------------------------------------------------------------------------------


@console_login_required
@require_GET
def errors(request: HttpRequest, tenant: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    form = ErrorFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    filters = selectors.ErrorFilters(
        code=(data.get("code") or "").strip().upper(),
        replica=data.get("replica"),
        user=data.get("user") or "",
        collection=data.get("collection") or "",
        since=data.get("since"),
        until=data.get("until"),
    )
    return _render(
        request,
        "console/errors.html",
        {
            "access": access,
            "tenant": access.tenant,
            "form": form if form.is_bound else ErrorFilterForm(),
            "page": _page(
                request, selectors.error_event_list(tenant=access.tenant, filters=filters)
            ),
            "codes": selectors.error_codes_seen(tenant=access.tenant),
            "section": "errors",
        },
    )


@console_login_required
@require_GET
def error_codes(request: HttpRequest) -> HttpResponse:
    return _render(
        request, "console/error_codes.html", {"doc_html": errors_doc_html(), "section": "codes"}
    )


# --- topics -------------------------------------------------------------------------------


@console_login_required
@require_GET
def topics(request: HttpRequest, tenant: str) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    return _render(
        request,
        "console/topics.html",
        {
            "access": access,
            "tenant": access.tenant,
            "rows": selectors.topics_overview(tenant=access.tenant, user_id=request.user.pk or 0),
            "section": "topics",
        },
    )


@console_login_required
@require_GET
def topic_detail(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    access = tenant_or_404(request, tenant)
    topic = topic_visible_or_404(
        request,
        access,
        Topic.objects.filter(tenant=access.tenant, pk=pk).select_related("owner").first(),
    )
    return _render(
        request,
        "console/topic.html",
        {
            "access": access,
            "tenant": access.tenant,
            "topic": topic,
            "message_count": topic.messages.count(),
            "page": _page(request, selectors.topic_consumers(topic=topic)),
            "section": "topics",
        },
    )


# --- maintenance (server-wide: superusers) ------------------------------------------------

MAINTENANCE_JOBS: dict[str, tuple[MaintenanceJob, Callable[[], list[Any]]]] = {
    MaintenanceJob.GC.value: (MaintenanceJob.GC, tombstones_collect_all),
    MaintenanceJob.JOURNAL_PRUNE.value: (MaintenanceJob.JOURNAL_PRUNE, journal_prune_all),
}


@console_login_required
@require_GET
def maintenance(request: HttpRequest) -> HttpResponse:
    server_admin_or_404(request)
    runs = maintenance_runs_latest(limit=50)
    last = {job: next((r for r in runs if r.job == job), None) for job in MAINTENANCE_JOBS}
    return _render(
        request,
        "console/maintenance.html",
        {
            "runs": runs,
            "last_gc": last[MaintenanceJob.GC.value],
            "last_prune": last[MaintenanceJob.JOURNAL_PRUNE.value],
            "server_errors": selectors.server_errors(),
            "section": "maintenance",
        },
    )


@console_login_required
@require_POST
def maintenance_start(request: HttpRequest) -> HttpResponse:
    server_admin_or_404(request)
    chosen = MAINTENANCE_JOBS.get(request.POST.get("job", ""))
    if chosen is None:
        messages.error(request, "Unknown job; choose tombstone GC or journal pruning.")
        return redirect("console:maintenance")
    job, action = chosen
    try:
        run, _ = maintenance_run(job=job, trigger="console", action=action)
    except Exception:  # recorded by maintenance_run (run row and DG-7002 event)
        messages.error(request, f"{job.label} failed; the run below has the error.")
    else:
        messages.success(request, f"{job.label}: {run.summary}")
    return redirect("console:maintenance")
