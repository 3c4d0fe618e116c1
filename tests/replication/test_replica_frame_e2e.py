"""The replica SDK and documents that cannot fit a frame, against a real daphne (issue 14,
item 6): `put` refuses them with a clear error; one already journaled (a replica that believed
the server took larger frames) is rejected and kept with its code, shown by `status`, and the
rest of the journal reaches the server; a live replica goes live instead of reconnecting in a
loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datagate_replica import DocumentTooLarge, Replica, SyncError

from replication.models import Document
from tests.support.server_processes import DaphneServer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def server(tmp_path: Path, collection: Any) -> Iterator[DaphneServer]:
    running = DaphneServer.start(tmp_path=tmp_path)  # DATAGATE_MAX_FRAME_BYTES: 1 MiB
    yield running
    running.stop()


@pytest.fixture
def token(member: Any, issue_token: Any) -> str:
    return str(issue_token(member("writer", "writer"), "read write"))


def open_replica(server: DaphneServer, token: str, path: Path, **options: Any) -> Replica:
    return Replica(server.http_url, "acme", "notes", token, path=path, backoff_base=0.05, **options)


def stored() -> set[str]:
    return set(Document.objects.values_list("doc_id", flat=True))


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_put_refuses_a_document_that_cannot_fit_a_frame(
    server: DaphneServer, token: str, tmp_path: Path
) -> None:
    with open_replica(server, token, tmp_path / "r.sqlite3") as replica:
        with pytest.raises(DocumentTooLarge, match="must fit in one websocket frame"):
            replica.put("huge", blob="x" * (2 * MIB))
        replica.put("fine", blob="y" * (MIB // 2))
        assert replica.get("huge") is None
        assert replica.status()["journal"] == 1
        replica.sync()
    assert stored() == {"fine"}


def test_a_journaled_oversized_change_is_kept_rejected_and_blocks_nothing(
    server: DaphneServer, token: str, tmp_path: Path
) -> None:
    path = tmp_path / "r.sqlite3"
    # A replica told the server takes 4 MiB frames: `put` lets a 2 MiB document through.
    with open_replica(server, token, path, max_frame_bytes=4 * MIB) as replica:
        replica.put("before", n=1)
        replica.put("huge", blob="x" * (2 * MIB))
        replica.put("after", n=2)
        with pytest.raises(SyncError) as failed:
            replica.sync()  # the server refuses the frame: DG-2007, close 1009
        assert "DG-2007" in str(failed.value) or failed.value.close_code == 1009
        report = replica.sync()  # the next session sends the rest and keeps the culprit
        status = replica.status()
        assert status["journal"] == 0
        assert status["frame_limit"] == MIB  # learned from DG-2007's text
        assert [(r["id"], r["code"]) for r in status["rejected"]] == [("huge", "DG-4013")]
        assert [r.version.doc_id for r in report.rejected] == ["huge"]
        # The local copy stays; later puts of that size are refused up front.
        assert replica.get("huge") is not None
        with pytest.raises(DocumentTooLarge):
            replica.put("huge-2", blob="x" * (2 * MIB))
    assert stored() == {"before", "after"}


def test_a_live_replica_goes_live_instead_of_reconnecting_in_a_loop(
    server: DaphneServer, token: str, tmp_path: Path
) -> None:
    with open_replica(server, token, tmp_path / "r.sqlite3", max_frame_bytes=4 * MIB) as replica:
        replica.put("huge", blob="x" * (2 * MIB))
        replica.put("small", n=1)
        retries: list[str] = []
        replica.engine.on_retry = lambda error, delay: retries.append(str(error))
        replica.start()
        replica.wait_live(timeout=30)
        wait_for(lambda: stored() == {"small"})
        assert len(retries) == 1
        assert "DG-2007" in retries[0]
        assert [r.version.doc_id for r in replica.rejected()] == ["huge"]
        # Live writes after it flow as usual.
        replica.put("later", n=2)
        wait_for(lambda: stored() == {"small", "later"})
        replica.stop()
    assert "Traceback" not in server.log()
