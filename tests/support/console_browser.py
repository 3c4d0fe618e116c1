"""Driving the console in a real headless Chromium (Playwright, Debian's /usr/bin/chromium):
logging in, screenshots, and a live wire replica on its own thread beside the browser. The
`browser` fixture is in `tests/console/conftest.py`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from tests.support.wire_replica import WebsocketsTransport, WireReplica

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
WAIT_MS = 30_000


def log_in(browser: Any, daphne: Any, username: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{daphne.http_url}/")
    assert "/console/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}")
    page.click("button[type=submit]")
    page.wait_for_selector(".sections")
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


class ReplicaThread:
    """A live replica (tests/support/wire_replica.py over a real socket) on its own event loop
    thread, so the test can drive the browser and the replica side by side."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.replica: WireReplica | None = None

    def call(self, coroutine: Any, timeout: float = WAIT_MS / 1000) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, *, url: str, token: str, origin: str, collection: str = "notes") -> WireReplica:
        async def open_and_sync() -> WireReplica:
            transport = await WebsocketsTransport.open(url)
            replica = WireReplica(
                transport=transport,
                token=token,
                tenant="acme",
                collection=collection,
                origin=origin,
            )
            await replica.sync()
            return replica

        self.replica = self.call(open_and_sync())
        return self.replica

    def stop(self) -> None:
        if self.replica is not None:
            with contextlib.suppress(Exception):
                self.call(self.replica.transport.close(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
