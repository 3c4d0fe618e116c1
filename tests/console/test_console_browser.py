"""The console in a real headless Chromium against a real daphne, driven by Playwright.

Playwright never downloads a browser here: it launches Debian's /usr/bin/chromium
(`tests.support.external_services.require_chromium`). Screenshots of the main pages go to
test-artifacts/screenshots/. These tests are few on purpose: each one starts a browser.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from accounts.access import System
from core.errors import ErrorCode
from replication.models import Document, JournalEntry
from replication.services.documents import document_put
from tests.support.console_browser import WAIT_MS, ReplicaThread, log_in, shot
from tests.support.console_builders import connect_replica, record_error
from tests.support.wire_replica import FEED_ACK

pytestmark = pytest.mark.e2e


def lag_is(page: Any, origin: str, lag: str) -> None:
    page.wait_for_function(
        """([origin, lag]) => {
            const row = document.querySelector(`#online-table tr[data-replica="${origin}"]`);
            const cell = row && row.querySelector("[data-lag]");
            return cell && cell.textContent.trim() === lag;
        }""",
        arg=[origin, lag],
        timeout=WAIT_MS,
    )


def test_admin_watches_a_replica_connect_and_fall_behind_then_edits_a_document(
    daphne: Any, browser: Any, member: Any, collection: Any, issue_token: Any
) -> None:
    admin = member("ada", "admin")
    walt = member("walt", "writer")
    token = issue_token(walt, "read write")
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="note-1",
        body={"title": "first"},
        origin="seed",
    )
    page = log_in(browser, daphne, "ada")
    assert page.url.endswith("/console/t/acme/")
    page.wait_for_selector(".live-status.live")
    # A marker on the window object survives only if the page is never reloaded.
    page.evaluate("window.__noReload = true")
    assert "No replica is online" in page.locator("#online-table").inner_text()

    side = ReplicaThread()
    try:
        phone = side.start(
            url=f"{daphne.ws_url}/ws/datagate/acme/notes/", token=token, origin="phone-1"
        )
        assert phone.documents["note-1"]["title"] == "first"
        page.locator('#online-table tr[data-replica="phone-1"]').wait_for()
        lag_is(page, "phone-1", "0")

        # A change the replica receives but does not acknowledge yet: it falls behind by one.
        document_put(
            actor=System("test"),
            collection_id=collection.pk,
            doc_id="note-2",
            body={"n": 2},
            origin="seed",
        )
        feed = side.call(phone.next_feed(ack=False))
        lag_is(page, "phone-1", "1")
        side.call(
            phone.send(
                phone.message(
                    FEED_ACK, feed["header"]["id"], receipt=phone.receipt_for(feed["feed"])
                )
            )
        )
        lag_is(page, "phone-1", "0")
        assert page.evaluate("window.__noReload") is True
        record_error(collection=collection, user=walt, code=ErrorCode.READ_ONLY)
        page.wait_for_selector('#recent-errors a.code:has-text("DG-3002")')
        shot(page, "dashboard")

        page.click('.sections a:has-text("Replicas")')
        page.wait_for_selector("#replicas-table")
        shot(page, "replicas")
        page.click('#replicas-table a:has-text("phone-1")')
        page.wait_for_selector("#disconnect")
        shot(page, "replica")

        # An edit in the console arrives at the live replica as a feed.
        page.goto(f"{daphne.http_url}/console/t/acme/c/notes/documents/")
        shot(page, "documents")
        page.click('#documents-table a:has-text("note-1")')
        page.click("#edit-document")
        page.fill("#id_body", '{"title": "edited in the browser"}')
        page.click("#save-document")
        page.wait_for_selector("#document-body")
        assert "edited in the browser" in page.inner_text("#document-body")
        shot(page, "document")
        doc = Document.objects.get(collection=collection, doc_id="note-1")
        assert (doc.body, doc.revision) == ({"title": "edited in the browser"}, 2)
        entry = JournalEntry.objects.filter(collection=collection, doc_id="note-1").latest("seq")
        assert (entry.operation, entry.user_id, entry.origin) == ("put", admin.pk, "console:ada")
        side.call(phone.feed_until(entry.seq))
        assert phone.documents["note-1"]["title"] == "edited in the browser"

        page.goto(f"{daphne.http_url}/console/t/acme/errors/")
        shot(page, "errors")
        page.click('#errors-table a.code:has-text("DG-3002")')
        page.wait_for_selector("#dg-3002")
        assert page.url.endswith("#dg-3002")
        shot(page, "error-codes")
    finally:
        side.stop()
    page.close()


def test_reader_sees_no_actions_and_a_forged_post_is_refused(
    daphne: Any, browser: Any, member: Any, collection: Any
) -> None:
    admin = member("ada", "admin")
    member("rita", "reader")
    document_put(
        actor=System("test"),
        collection_id=collection.pk,
        doc_id="note-1",
        body={"t": 1},
        origin="seed",
    )
    replica = connect_replica(collection=collection, user=admin, replica_id="phone-1")
    page = log_in(browser, daphne, "rita")
    assert page.locator(".badge.readonly").inner_text() == "read-only"

    page.goto(f"{daphne.http_url}/console/t/acme/replicas/{replica.pk}/")
    page.wait_for_selector("h1")
    assert page.locator("#disconnect, #revoke, form[action$='/disconnect/']").count() == 0
    shot(page, "replica-as-reader")

    page.goto(f"{daphne.http_url}/console/t/acme/c/notes/document/?id=note-1")
    assert page.locator("#edit-document, #delete-document").count() == 0
    page.goto(f"{daphne.http_url}/console/t/acme/c/notes/documents/")
    assert page.locator("#new-document").count() == 0

    # Even a hand-made POST with a valid CSRF token is refused.
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const body = new URLSearchParams({id: "note-1", csrfmiddlewaretoken: token});
            const response = await fetch(url, {method: "POST", body, redirect: "manual"});
            return response.status;
        }""",
        f"{daphne.http_url}/console/t/acme/c/notes/document/delete/",
    )
    assert status == 403
    assert Document.objects.filter(collection=collection, doc_id="note-1").exists()
    assert re.search(r"/console/t/acme/c/notes/documents/$", page.url)
    page.close()
