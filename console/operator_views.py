"""The console pages an operator runs DataGate with: collections (create, settings, search
fields, access with the "who may read this document" explainer, export and import, delete),
members and their tokens, topic messages and publish, and the audit log.

Every action is a thin shell: parse the form, call the service with `request.user` as the
actor, render. The services decide access (DG-72xx or PermissionDenied) and write the audit
entry; nothing here writes to the database directly.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_http_methods
from oauth2_provider.models import get_access_token_model, get_application_model

from accounts.audit import audit_entries
from accounts.models import KeyRule, Membership, Role
from accounts.services import (
    KNOWN_SCOPES,
    collection_perm_grant,
    collection_perm_list,
    collection_perm_revoke,
    key_rule_add,
    key_rule_remove,
    member_add,
    member_application_create,
    member_application_delete,
    member_remove,
    member_token_issue,
    member_token_revoke,
)
from console.access import (
    TenantAccess,
    may_administer_collection,
    may_create_collection,
    may_publish_topic,
    member_policy,
    member_role,
    tenant_or_404,
    topic_visible_or_404,
)
from console.views import _collection, _page, _render, console_login_required
from core.errors import DataGateError
from replication import collection_services
from replication.models import Collection
from topics.models import Topic
from topics.selectors import messages_read
from topics.services import Publication, messages_publish

# Failures an action reports on the page rather than as an error page.
ACTION_ERRORS = (DataGateError, ValueError, LookupError, ValidationError)


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)


def _days(raw: str) -> int | None:
    """A days field: empty is the server default; anything else must be a whole number."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return -1  # the service answers DG-7204 with the allowed range


def _need_admin(access_: TenantAccess) -> None:
    if not access_.can_admin:
        raise PermissionDenied("Only tenant admins may do this.")


# --- collections --------------------------------------------------------------------------


@console_login_required
@require_http_methods(["GET", "POST"])
def collections(request: HttpRequest, tenant: str) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    may_create = may_create_collection(request, tenant_access)
    if request.method == "POST":
        if not may_create:
            raise PermissionDenied("Only the tenant's admins and writers create collections.")
        name = request.POST.get("name", "").strip()
        try:
            collection_services.collection_create(
                actor=request.user,
                tenant=tenant_access.tenant,
                name=name,
                tombstone_ttl_days=_days(request.POST.get("tombstone_ttl_days", "")),
                journal_retention_days=_days(request.POST.get("journal_retention_days", "")),
            )
        except DataGateError as exc:
            messages.error(request, exc.text)
        else:
            messages.success(request, f"Created collection {name}.")
            return redirect(
                "console:collection_settings", tenant=tenant_access.tenant.slug, collection=name
            )
    rows = Collection.objects.filter(tenant=tenant_access.tenant).select_related("search_index")
    return _render(
        request,
        "console/collections.html",
        {
            "access": tenant_access,
            "tenant": tenant_access.tenant,
            "collections": list(rows),
            "may_create": may_create,
            "section": "collections",
        },
    )


def _explain(
    request: HttpRequest, tenant_access: TenantAccess, coll: Collection, doc_id: str
) -> list[dict[str, Any]]:
    """Who may read, write and delete `doc_id`: each member and each grant holder, decided by
    the access door itself (`console.access.member_policy`), so the answer is what a replica
    would get."""
    users = get_user_model()
    member_ids = set(
        Membership.objects.filter(tenant=tenant_access.tenant).values_list("user_id", flat=True)
    )
    granted = {name for kind, name, _ in _grants(tenant_access, coll) if kind == "user"}
    people = users.objects.filter(pk__in=member_ids) | users.objects.filter(username__in=granted)
    rows: list[dict[str, Any]] = []
    for user in people.distinct().order_by("username"):
        policy = member_policy(user=user, tenant_access=tenant_access, coll=coll)
        rows.append(
            {
                "user": user.get_username(),
                "role": member_role(user=user, tenant=tenant_access.tenant) or "—",
                "read": policy.may_read(doc_id),
                "write": policy.may_write(doc_id),
                "delete": policy.may_delete(doc_id),
            }
        )
    return rows


def _grants(tenant_access: TenantAccess, coll: Collection) -> list[tuple[str, str, str]]:
    try:
        return collection_perm_list(tenant=tenant_access.tenant, collection_name=coll.name)
    except LookupError:
        return []


def _subject(post: Any) -> dict[str, Any]:
    """`user` or `group` from a form; empty: everyone (key rules only)."""
    username, group = post.get("user", "").strip(), post.get("group", "").strip()
    if username:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise LookupError(f"no user {username!r}")
        return {"user": user}
    if group:
        found, _ = Group.objects.get_or_create(name=group)
        return {"group": found}
    return {}


def _collection_action(
    request: HttpRequest, tenant_access: TenantAccess, coll: Collection
) -> HttpResponse | None:
    """Run one POSTed action; a response to send instead of the page, or None."""
    action = request.POST.get("action", "")
    post, actor, tenant = request.POST, request.user, tenant_access.tenant
    if action == "settings":
        collection_services.collection_settings_set(
            actor=actor,
            collection=coll,
            tombstone_ttl_days=_days(post.get("tombstone_ttl_days", "")),
            journal_retention_days=_days(post.get("journal_retention_days", "")),
        )
        messages.success(request, "Saved the tombstone TTL and journal retention.")
    elif action == "search":
        fields = [f.strip() for f in post.get("fields", "").split(",") if f.strip()]
        count = collection_services.collection_search_fields_set(
            actor=actor, collection=coll, fields=fields
        )
        messages.success(
            request,
            f"Search indexes {', '.join(fields)} ({count} documents)."
            if fields
            else "Search is off for this collection.",
        )
    elif action == "delete":
        collection_services.collection_delete(
            actor=actor, collection=coll, confirm=post.get("confirm", "")
        )
        messages.success(request, f"Deleted collection {coll.name}.")
        return redirect("console:collections", tenant=tenant.slug)
    elif action in ("grant", "revoke"):
        service = collection_perm_grant if action == "grant" else collection_perm_revoke
        service(
            tenant=tenant,
            collection_name=coll.name,
            perm=post.get("perm", ""),
            actor=actor,
            **_subject(post),
        )
        messages.success(request, f"{action.title()}ed {post.get('perm')}.")
    elif action == "rule":
        rule = key_rule_add(
            tenant=tenant,
            collection_name=coll.name,
            pattern=post.get("pattern", "").strip(),
            effect=post.get("effect", ""),
            actions=post.getlist("actions"),
            position=int(post.get("position") or 100),
            actor=actor,
            **_subject(post),
        )
        messages.success(request, f"Added key rule {rule}.")
    elif action == "unrule":
        rule_id = int(post.get("rule", "0") or 0)
        if not KeyRule.objects.filter(
            pk=rule_id, tenant=tenant, collection_name=coll.name
        ).exists():
            raise Http404("No such rule.")
        key_rule_remove(rule_id=rule_id, actor=actor)
        messages.success(request, f"Removed key rule #{rule_id}.")
    elif action == "import":
        upload = request.FILES.get("file")
        if upload is None:
            raise ValueError("choose an export file to import")
        text = io.StringIO(upload.read().decode("utf-8"))
        report = collection_services.collection_import_as(actor=actor, collection=coll, source=text)
        messages.success(request, report.line())
    else:
        raise Http404("No such action.")
    return redirect("console:collection_settings", tenant=tenant.slug, collection=coll.name)


@console_login_required
@require_http_methods(["GET", "POST"])
def collection_settings(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    coll = _collection(tenant_access, collection)
    may_admin = may_administer_collection(request, tenant_access, coll)
    if request.method == "POST":
        if not may_admin:
            raise PermissionDenied("Only the collection's admins may change it.")
        try:
            response = _collection_action(request, tenant_access, coll)
        except ACTION_ERRORS as exc:
            messages.error(request, _error_text(exc))
        else:
            if response is not None:
                return response
        coll.refresh_from_db()
    explain_id = request.GET.get("explain", "")
    fields = getattr(getattr(coll, "search_index", None), "fields", None) or []
    return _render(
        request,
        "console/collection_settings.html",
        {
            "access": tenant_access,
            "tenant": tenant_access.tenant,
            "collection": coll,
            "may_admin": may_admin,
            "search_fields": ", ".join(fields),
            "grants": _grants(tenant_access, coll),
            "rules": KeyRule.objects.filter(
                tenant=tenant_access.tenant, collection_name=coll.name
            ).select_related("user", "group"),
            "explain_id": explain_id,
            "explained": _explain(request, tenant_access, coll, explain_id) if explain_id else None,
            "section": "collections",
        },
    )


@console_login_required
@require_GET
def collection_export(request: HttpRequest, tenant: str, collection: str) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    coll = _collection(tenant_access, collection)
    out = io.StringIO()
    try:
        collection_services.collection_export_as(actor=request.user, collection=coll, out=out)
    except DataGateError as exc:
        raise PermissionDenied(exc.text) from exc
    response = HttpResponse(out.getvalue(), content_type="application/x-ndjson; charset=utf-8")
    filename = f"{tenant_access.tenant.slug}-{coll.name}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- members and tokens -------------------------------------------------------------------


def _member(tenant_access: TenantAccess, username: str) -> Any:
    membership = (
        Membership.objects.filter(tenant=tenant_access.tenant, user__username=username)
        .select_related("user")
        .first()
    )
    if membership is None:
        raise Http404("No such member.")
    return membership.user


def _tokens(user_ids: list[int]) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {pk: [] for pk in user_ids}
    rows = (
        get_access_token_model()
        .objects.filter(user_id__in=user_ids)
        .select_related("application")
        .order_by("-created")
    )
    for token in rows:
        found[token.user_id].append(token)
    return found


def _applications(user_ids: list[int]) -> list[Any]:
    return list(
        get_application_model()
        .objects.filter(user_id__in=user_ids)
        .select_related("user")
        .annotate(token_count=Count("accesstoken"))
        .order_by("name")
    )


@console_login_required
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest, tenant: str) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    _need_admin(tenant_access)
    issued = None
    created_app = None
    if request.method == "POST":
        post, actor = request.POST, request.user
        action = post.get("action", "")
        try:
            if action == "add":
                user, created = member_add(
                    actor=actor,
                    tenant=tenant_access.tenant,
                    username=post.get("username", "").strip(),
                    role=post.get("role", ""),
                    password=post.get("password", ""),
                )
                messages.success(
                    request,
                    f"{'Created' if created else 'Updated'} {user.get_username()} "
                    f"as {post.get('role')}.",
                )
            elif action == "remove":
                user = _member(tenant_access, post.get("username", ""))
                member_remove(actor=actor, tenant=tenant_access.tenant, user=user)
                messages.success(request, f"Removed {user.get_username()} from the tenant.")
            elif action == "issue":
                user = _member(tenant_access, post.get("username", ""))
                scopes = [s for s in post.getlist("scope") if s in KNOWN_SCOPES]
                issued = member_token_issue(
                    actor=actor, tenant=tenant_access.tenant, user=user, scopes=scopes
                )
                issued_for = user.get_username()
            elif action == "revoke":
                user = _member(tenant_access, post.get("username", ""))
                raw_id = post.get("token", "")
                count = member_token_revoke(
                    actor=actor,
                    tenant=tenant_access.tenant,
                    user=user,
                    token_id=int(raw_id) if raw_id.isdigit() else None,
                )
                messages.success(request, f"Revoked {count} token(s) of {user.get_username()}.")
            elif action == "app_create":
                owner = _member(tenant_access, post.get("owner", ""))
                created_app = member_application_create(
                    actor=actor,
                    tenant=tenant_access.tenant,
                    owner=owner,
                    name=post.get("name", ""),
                    kind=post.get("kind", ""),
                    redirect_uris=post.get("redirect_uris", ""),
                )
            elif action == "app_delete":
                raw_id = post.get("application", "")
                name = member_application_delete(
                    actor=actor,
                    tenant=tenant_access.tenant,
                    application_id=int(raw_id) if raw_id.isdigit() else 0,
                )
                messages.success(request, f"Deleted application {name} and its tokens.")
            else:
                raise Http404("No such action.")
        except ACTION_ERRORS as exc:
            messages.error(request, _error_text(exc))
        if issued is None and created_app is None:
            return redirect("console:members", tenant=tenant_access.tenant.slug)
    rows = list(
        Membership.objects.filter(tenant=tenant_access.tenant)
        .select_related("user")
        .order_by("user__username")
    )
    tokens = _tokens([m.user_id for m in rows])
    return _render(
        request,
        "console/members.html",
        {
            "access": tenant_access,
            "tenant": tenant_access.tenant,
            "members": [{"membership": m, "tokens": tokens[m.user_id]} for m in rows],
            "roles": Role.choices,
            "scopes": sorted(KNOWN_SCOPES),
            "issued": issued,
            "issued_for": issued_for if issued is not None else "",
            "created_app": created_app,
            "applications": _applications([m.user_id for m in rows]),
            "section": "members",
        },
    )


# --- topics: messages by offset, and publish ---------------------------------------------


@console_login_required
@require_http_methods(["GET", "POST"])
def topic_messages(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    topic = topic_visible_or_404(
        request, tenant_access, Topic.objects.filter(tenant=tenant_access.tenant, pk=pk).first()
    )
    may_publish = may_publish_topic(request, tenant_access, topic)
    if request.method == "POST":
        if not may_publish:
            raise PermissionDenied("You may not publish to this topic.")
        raw = request.POST.get("payload", "")
        message_id = request.POST.get("message_id", "").strip() or f"console-{uuid.uuid4()}"
        try:
            payload = json.loads(raw)
            offsets = messages_publish(
                topic_id=topic.pk,
                messages=[Publication(message_id=message_id, payload=payload)],
                publisher_id=request.user.pk,
                device="console",
            )
        except ValueError as exc:
            messages.error(request, f"The payload is not JSON: {exc}")
        except DataGateError as exc:
            messages.error(request, exc.text)
        else:
            messages.success(request, f"Published {message_id} at offset {offsets[0]}.")
            return redirect(f"{request.path}?from={max(1, offsets[0] - PAGE + 1)}")
    raw_from = request.GET.get("from", "")
    start = int(raw_from) if raw_from.isdigit() else max(1, topic.last_offset - PAGE + 1)
    read = messages_read(topic_id=topic.pk, from_offset=start, limit=PAGE)
    found, last = read if read is not None else ([], 0)
    return _render(
        request,
        "console/topic_messages.html",
        {
            "access": tenant_access,
            "tenant": tenant_access.tenant,
            "topic": topic,
            "rows": [{"m": m, "payload": json.dumps(m.payload, ensure_ascii=False)} for m in found],
            "start": start,
            "last": last,
            "previous": max(1, start - PAGE) if start > 1 else None,
            "next": start + PAGE if start + PAGE <= last else None,
            "may_publish": may_publish,
            "section": "topics",
        },
    )


PAGE = 50


# --- the audit log ------------------------------------------------------------------------


@console_login_required
@require_GET
def audit(request: HttpRequest, tenant: str) -> HttpResponse:
    tenant_access = tenant_or_404(request, tenant)
    _need_admin(tenant_access)
    entries = audit_entries(
        tenant=tenant_access.tenant,
        action=request.GET.get("action", "").strip(),
        actor=request.GET.get("actor", "").strip(),
    )
    return _render(
        request,
        "console/audit.html",
        {
            "access": tenant_access,
            "tenant": tenant_access.tenant,
            "page": _page(request, entries),
            "action": request.GET.get("action", ""),
            "actor": request.GET.get("actor", ""),
            "section": "audit",
        },
    )
