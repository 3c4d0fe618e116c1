"""The console's disconnect crosses processes: two daphnes on PostgreSQL and Redis (required in
CI, skipped elsewhere). The replica is live on server A; an admin presses Disconnect in the
console served by server B."""

from __future__ import annotations

import asyncio
import http.cookiejar
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from tests.support.external_services import require_postgres, require_redis
from tests.support.server_processes import DaphneServer, manage
from tests.support.wire_replica import DISCONNECT, WebsocketsTransport, WireReplica

pytestmark = [pytest.mark.services, pytest.mark.e2e]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import psycopg

    base = urlparse(require_postgres())
    redis_url = require_redis()
    name = f"dg_console_{uuid.uuid4().hex[:10]}"
    server_url = urlunparse(base._replace(path="/postgres"))
    tmp = Path(tmp_path_factory.mktemp("console-cluster"))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    servers: list[DaphneServer] = []
    try:
        extra = {
            "DATABASE_URL": urlunparse(base._replace(path=f"/{name}")),
            "REDIS_URL": redis_url,
            "DATAGATE_REDIS_PREFIX": f"dg-test-{uuid.uuid4().hex[:8]}",
            "DATAGATE_DATA_DIR": str(tmp / "data"),
        }
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "DATAGATE_SQLITE_PATH"}
        }
        env.update(extra)
        manage(env, "migrate", "--no-input")
        printed = manage(env, "datagate_bootstrap")
        password = re.search(r"with password '([^']+)'", printed)
        assert password is not None, printed
        token = manage(env, "datagate_token", "admin").strip()
        for server_name in ("a", "b"):
            servers.append(DaphneServer.start(tmp_path=tmp, extra_env=extra, name=server_name))
        yield {"token": token, "password": password.group(1), "a": servers[0], "b": servers[1]}
    finally:
        for server in servers:
            server.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Browser:
    """Just enough of a browser for forms with CSRF tokens: cookies and POSTs."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return str(response.read().decode())

    def post(self, path: str, data: dict[str, str]) -> str:
        csrf = next(c.value for c in self.jar if c.name == "csrftoken")
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": csrf}).encode()
        try:
            with self.opener.open(self.base + path, data=body, timeout=30) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST {path}: {error.code} at {error.url}") from None


def console_disconnect(server: DaphneServer, password: str, origin: str) -> str:
    browser = Browser(server.http_url)
    browser.get("/console/login/")
    browser.post("/console/login/", {"username": "admin", "password": password})
    listing = browser.get(f"/console/t/demo/replicas/?q={origin}")
    found = re.search(r'href="(/console/t/demo/replicas/\d+/)"', listing)
    assert found is not None, listing
    return browser.post(found.group(1) + "disconnect/", {})


async def test_disconnect_pressed_on_one_server_ends_the_session_on_the_other(
    cluster: dict[str, Any],
) -> None:
    transport = await WebsocketsTransport.open(f"{cluster['a'].ws_url}/ws/datagate/demo/notes/")
    phone = WireReplica(
        transport=transport,
        token=cluster["token"],
        tenant="demo",
        collection="notes",
        origin="phone-a",
    )
    await phone.sync()
    page = await asyncio.to_thread(console_disconnect, cluster["b"], cluster["password"], "phone-a")
    assert "Asked replica phone-a to disconnect" in page
    await phone.expect(DISCONNECT, timeout=30)
    assert await phone.expect_close(timeout=30) == 1000
    for server in (cluster["a"], cluster["b"]):
        assert "Traceback" not in server.log()
