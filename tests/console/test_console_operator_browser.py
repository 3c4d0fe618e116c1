"""An operator runs a tenant from the console alone, in a real headless Chromium on real daphne.

One flowing journey (each browser start costs seconds on this machine): add a read-only
member, give them a key rule and check it with the explainer, issue their token, create a
collection with a 7-day TTL, watch their replica connect on the live replicas page, search
the documents, browse a topic and publish, revoke the token, and find every action in the
audit log. No step may leave an error in the browser console.
"""

from __future__ import annotations

from typing import Any

import pytest

from accounts.access import System
from accounts.models import AuditEntry
from replication.models import Collection
from replication.services.documents import document_put
from tests.support.console_browser import WAIT_MS, ReplicaThread, log_in, shot
from topics.models import Message
from topics.services import topic_create

pytestmark = pytest.mark.e2e


def submit(page: Any, form: str) -> None:
    """Submit a form and wait for the page it leads to."""
    with page.expect_navigation():
        page.click(f"{form} button[type=submit]")


def test_an_operator_runs_a_member_from_the_console_alone(
    daphne: Any, browser: Any, member: Any, tenant: Any
) -> None:
    member("ada", "admin")
    topic = topic_create(tenant=tenant, name="news", scope="global", owner_id=None)
    page = log_in(browser, daphne, "ada")
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda dialog: dialog.accept())
    base = f"{daphne.http_url}/console/t/acme"

    # 1. A collection with a 7-day tombstone TTL.
    page.click('.sections a:has-text("Collections")')
    page.fill("#new-collection-name", "events")
    page.fill("#new-collection-ttl", "7")
    submit(page, "#collection-create")
    assert "7 days" in page.inner_text("#collection-facts [data-ttl]")
    assert Collection.objects.get(name="events").tombstone_ttl_days == 7
    page.fill("#search-fields", "title")
    submit(page, "#collection-search")

    # 2. A read-only member, then a key rule that hides secret/* from them.
    page.click('.sections a:has-text("Members")')
    page.fill("#member-username", "rita")
    page.fill("#member-password", "a long enough password 1")
    page.select_option("#member-role", "reader")
    submit(page, "#member-form")
    assert page.inner_text('#members-table tr[data-member="rita"] [data-role]') == "reader"
    page.goto(f"{base}/c/events/settings/")
    page.select_option("#rule-effect", "deny")
    page.fill("#rule-pattern", "secret/*")
    page.fill("#rule-user", "rita")
    submit(page, "#rule-form")
    assert "secret/*" in page.inner_text("#rules-table")
    page.fill("#explain-id", "secret/1")
    submit(page, "#explain-form")
    may_read = '#explain-table tr[data-user="{}"] [data-may="read"]'
    assert page.inner_text(may_read.format("rita")) == "no"
    assert page.inner_text(may_read.format("ada")) == "yes"
    shot(page, "collection-settings")

    # 3. Their token, shown once.
    page.click('.sections a:has-text("Members")')
    submit(page, '#members-table tr[data-member="rita"] form.issue-token')
    token = page.inner_text("#issued-token").strip()
    assert len(token) > 20

    # 4. Their replica appears on the replicas page without a reload.
    page.click('.sections a:has-text("Replicas")')
    page.wait_for_selector(".live-status.live")
    page.evaluate("window.__noReload = true")
    side = ReplicaThread()
    try:
        side.start(
            url=f"{daphne.ws_url}/ws/datagate/acme/events/",
            token=token,
            origin="rita-1",
            collection="events",
        )
        row = page.locator('#replicas-table tr[data-replica="rita-1"]')
        row.wait_for(timeout=WAIT_MS)
        assert "online" in row.inner_text()
        assert page.evaluate("window.__noReload") is True
        shot(page, "replicas-live")

        # 5. Full-text search in the document browser.
        events = Collection.objects.get(name="events")
        for doc_id, title in (("e1", "harbour lights"), ("e2", "mountain pass")):
            document_put(
                actor=System("test seed"),
                collection_id=events.pk,
                doc_id=doc_id,
                body={"title": title},
                origin="seed",
            )
        page.goto(f"{base}/c/events/documents/")
        page.fill("#id_q", "harbour")
        submit(page, "form.filters")
        assert page.locator("#search-results tr[data-doc]").count() == 1
        assert page.locator('#search-results tr[data-doc="e1"]').count() == 1

        # 6. A topic: browse its messages and publish one.
        page.click('.sections a:has-text("Topics")')
        page.goto(f"{base}/topics/{topic.pk}/")
        page.click("#topic-messages")
        page.fill("#publish-payload", '{"headline": "from the console"}')
        submit(page, "#publish-form")
        page.locator('#messages-table tr[data-offset="1"]').wait_for()
        assert "from the console" in page.inner_text("#messages-table")
        assert Message.objects.get(topic=topic).payload == {"headline": "from the console"}

        # 7. Revoke the token.
        page.click('.sections a:has-text("Members")')
        submit(page, '#members-table tr[data-member="rita"] .token form')
        assert page.locator('#members-table tr[data-member="rita"] .token').count() == 0
    finally:
        side.stop()

    # 8. Every action, in the audit log.
    page.click('.sections a:has-text("Audit log")')
    log = page.inner_text("#audit-table")
    for action in (
        "collection.create",
        "collection.search",
        "user.create",
        "member.set",
        "rule.add",
        "token.issue",
        "token.revoke",
    ):
        assert action in log, action
    assert AuditEntry.objects.filter(actor_name="ada", action="token.revoke").count() == 1
    shot(page, "audit-log")
    assert problems == []
    page.close()


def test_every_console_page_loads_without_a_browser_console_error(
    daphne: Any, browser: Any, make_user: Any, member: Any, collection: Any, tenant: Any
) -> None:
    member("ada", "admin")
    make_user("root", is_superuser=True, is_staff=True)
    document_put(
        actor=System("test seed"),
        collection_id=collection.pk,
        doc_id="n1",
        body={"title": "one"},
        origin="seed",
    )
    topic = topic_create(tenant=tenant, name="news", scope="global", owner_id=None)
    page = log_in(browser, daphne, "root")
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    base = f"{daphne.http_url}/console"
    for path in (
        "/",
        "/t/acme/",
        "/t/acme/c/notes/",
        "/t/acme/replicas/",
        "/t/acme/c/notes/documents/",
        "/t/acme/c/notes/documents/?q=one",
        "/t/acme/c/notes/document/?id=n1",
        "/t/acme/c/notes/document/edit/?id=n1",
        "/t/acme/c/notes/documents/new/",
        "/t/acme/errors/",
        "/errors/codes/",
        "/t/acme/topics/",
        f"/t/acme/topics/{topic.pk}/",
        f"/t/acme/topics/{topic.pk}/messages/",
        "/t/acme/collections/",
        "/t/acme/c/notes/settings/?explain=n1",
        "/t/acme/members/",
        "/t/acme/audit/",
        "/maintenance/",
    ):
        response = page.goto(base + path)
        assert response is not None, path
        assert response.status == 200, path
        page.wait_for_load_state("load")
    page.goto(f"{daphne.http_url}/favicon.ico")
    assert problems == [], (problems, failed)
    assert failed == [], (problems, failed)
    page.close()
