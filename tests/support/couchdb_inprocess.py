"""Calling the CouchDB door (couchdb/asgi.py) in-process, as PouchDB's HTTP adapter would."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from channels.testing import HttpCommunicator

from couchdb.asgi import application


async def couch_raw(
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    query: dict[str, Any] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    """(status, raw body) of one request to `/couchdb/<path>`."""
    headers = [(b"content-type", b"application/json"), (b"accept", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    full = "/couchdb/" + path.lstrip("/")
    if query:
        full += "?" + urlencode(
            {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in query.items()}
        )
    communicator = HttpCommunicator(
        application,
        method,
        full,
        body=json.dumps(body).encode() if body is not None else b"",
        headers=headers,
    )
    response = await communicator.get_response(timeout=timeout)
    return response["status"], response["body"]


async def couch(
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    query: dict[str, Any] | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request to `/couchdb/<path>`."""
    status, raw = await couch_raw(method, path, token, body, query, timeout)
    raw = raw.strip()
    return status, json.loads(raw) if raw else None


def rev_path(*revs: str) -> dict[str, Any]:
    """`_revisions` for a path given newest first (`"3-c", "2-b", "1-a"`)."""
    return {"start": int(revs[0].split("-")[0]), "ids": [r.split("-", 1)[1] for r in revs]}


def replicated(doc_id: str, *revs: str, deleted: bool = False, **fields: Any) -> dict[str, Any]:
    """A document as PouchDB's replicator sends it to `_bulk_docs` with new_edits:false."""
    doc: dict[str, Any] = {"_id": doc_id, "_rev": revs[0], "_revisions": rev_path(*revs), **fields}
    if deleted:
        doc["_deleted"] = True
    return doc
