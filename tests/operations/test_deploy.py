"""What docs/deploy.md promises: health and readiness endpoints, and a graceful drain.

A stopping daphne answers /readyz with 503 for DATAGATE_DRAIN_DELAY seconds (the load balancer
takes it out), then sends every replica a Disconnect with a retry hint spread over
DATAGATE_DRAIN_SPREAD seconds and closes 1001; the SDK waits that hint before it reconnects.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from datagate_replica import Replica, SyncError
from django.test import Client

from core.shutdown import DRAINING
from datagate_site import site_views
from tests.support.server_processes import DaphneServer
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.django_db
def test_healthz_and_readyz_check_the_database_and_the_channel_layer(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"}}

    def broken() -> None:
        raise OSError("database down")

    monkeypatch.setattr(site_views, "_database_check", broken)
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"] == {"database": "failed: OSError", "channel_layer": "ok"}
    DRAINING.set()
    try:
        assert client.get("/readyz").json() == {"status": "draining"}
    finally:
        DRAINING.clear()


@pytest.mark.e2e
def test_a_stopping_server_drains_and_replicas_come_back_spread_out(
    transactional_db: Any, tmp_path: Path, member: Any, issue_token: Any, collection: Any
) -> None:
    token = issue_token(member("walt", "writer"), "read write")
    server = DaphneServer.start(
        tmp_path=tmp_path,
        extra_env={"DATAGATE_DRAIN_DELAY": "1.5", "DATAGATE_DRAIN_SPREAD": "4"},
    )
    replicas = [
        Replica(
            server.ws_url,
            "acme",
            "notes",
            token,
            path=tmp_path / f"r{i}.sqlite3",
            backoff_base=0.2,
            backoff_cap=1.0,
        )
        for i in range(3)
    ]
    try:
        for replica in replicas:
            replica.start()
            replica.wait_live(30)
        assert get_json(f"{server.http_url}/readyz")[0] == 200
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        status = wait_for(
            lambda: get_json(f"{server.http_url}/readyz"), what="/readyz to answer while draining"
        )
        assert status == (503, {"status": "draining"})
        assert all(replica.engine.live for replica in replicas)  # not closed during the delay
        # A newcomer is sent away at once, with its own hint.
        newcomer = Replica(server.ws_url, "acme", "notes", token, path=tmp_path / "new.sqlite3")
        try:
            with pytest.raises(SyncError) as refused:
                newcomer.sync()
        finally:
            newcomer.close()
        assert "going away" in str(refused.value)  # a Disconnect, or close 1001 right after it
        hint = refused.value.retry_after_ms
        assert hint is None or 0 <= hint <= 4000
        wait_for(
            lambda: all(r.engine.next_attempt_delay is not None for r in replicas),
            what="every replica to get its Disconnect",
        )
        hints = [r.engine.next_attempt_delay or 0.0 for r in replicas]
        assert all(0 <= hint <= 4 for hint in hints), hints
        assert len(set(hints)) == len(hints), hints  # spread, not one instant
        server.process.wait(timeout=15)
        assert "Traceback" not in server.log()
    finally:
        for replica in replicas:
            replica.close()
        server.stop()


def test_the_deploy_guide_names_every_file_it_tells_the_reader_to_copy() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for name in ("datagate@.service", "Procfile", "nginx.conf", "haproxy.cfg"):
        assert f"docs/deploy/{name}" in guide
        assert (ROOT / "docs" / "deploy" / name).is_file()
    for words in ("/readyz", "/healthz", "DATAGATE_DRAIN_DELAY", "retryAfterMs", "1001"):
        assert words in guide
