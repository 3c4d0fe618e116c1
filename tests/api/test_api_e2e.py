"""End to end on a real daphne: the HTTP API and live websocket replicas see one collection.

A document written over HTTP reaches a live replica as a feed; one pushed by a replica is
visible over HTTP, and the HTTP changes endpoint hands out the same markers as the websocket.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.support.fast_accounts import fast_cli_application, person
from tests.support.server_processes import DaphneServer
from tests.support.wire_replica import WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def http(
    server: DaphneServer, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        server.http_url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, dict(response.headers)
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read()), dict(failed.headers)


@pytest.fixture
def token(collection: Any, issue_token: Any) -> str:
    fast_cli_application()
    return str(issue_token(person("ann", "acme", "writer"), "read write"))


async def test_http_writes_reach_live_replicas_and_replica_pushes_show_over_http(
    daphne: DaphneServer, token: str
) -> None:
    base = "/api/v1/tenants/acme/collections/notes"
    transport = await WebsocketsTransport.open(f"{daphne.ws_url}/ws/datagate/acme/notes/")
    replica = WireReplica(
        transport=transport, token=token, tenant="acme", collection="notes", origin="phone"
    )
    await replica.sync()

    # HTTP -> live replica.
    status, written, headers = await asyncio.to_thread(
        http, daphne, "PUT", f"{base}/documents/from-http", token, {"title": "hello"}
    )
    assert status == 200, written
    status, page, _ = await asyncio.to_thread(http, daphne, "GET", f"{base}/changes/", token)
    head = page["endMarkers"]["collectionMarker"]
    await replica.feed_until(head)
    assert replica.documents["from-http"] == written
    assert replica.markers == page["endMarkers"]

    # Replica -> HTTP, with the same markers as the replica holds.
    before = dict(replica.markers)
    replica.put("from-phone", title="typed offline")
    await replica.send_feed()
    await replica.feed_until(before["collectionMarker"] + 1)
    status, doc, headers = await asyncio.to_thread(
        http, daphne, "GET", f"{base}/documents/from-phone", token
    )
    assert status == 200
    assert doc["title"] == "typed offline"
    assert doc["_origin"] == "phone"
    assert headers["ETag"] == f'"{doc["_revision"]}"'
    query = "?" + urllib.parse.urlencode(before)
    status, since, _ = await asyncio.to_thread(
        http, daphne, "GET", f"{base}/changes/{query}", token
    )
    assert [d["_id"] for d in since["feed"]["changeSet"]] == ["from-phone"]
    assert since["feed"]["changeSet"][0] == doc
    assert since["endMarkers"] == replica.markers

    # An HTTP delete reaches the replica as a tombstone.
    status, _, _ = await asyncio.to_thread(
        http, daphne, "DELETE", f"{base}/documents/from-http", token
    )
    assert status == 204
    await replica.feed_until(replica.markers["collectionMarker"] + 1)
    assert "from-http" in replica.tombstones
    assert "from-http" not in replica.documents
    assert "Traceback" not in daphne.log()
