"""A daphne process that is told to stop (SIGTERM or SIGINT) closes its sessions properly first.

Daphne stops on SIGTERM by stopping the Twisted reactor, whose shutdown cancels every
application and then drops the sockets: replicas would see an abnormal close (1006) and no
Disconnect (docs/decisions/0003-daphne-sends-1001-and-1009.md). `install_shutdown_handler` wraps
the reactor's signal handlers so that the process's hub drains first (`DRAINING`, then a
Disconnect and close 1001 for every session) and the reactor's own handler runs after.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

# Set when this process starts to stop: /readyz answers 503 from then on.
DRAINING = threading.Event()


class Drains(Protocol):
    """What the shutdown handler needs of a hub: close every session, then return."""

    async def shut_down(self) -> None: ...


def install_shutdown_handler(loop: asyncio.AbstractEventLoop, hub: Drains) -> None:
    """Under daphne, close sessions properly on SIGTERM/SIGINT, then let daphne stop.

    In a daphne process only (a running Twisted reactor), this wraps the reactor's handlers: on
    the signal `hub.shut_down()` runs on `loop` (every session gets Disconnect and close 1001,
    PROTOCOL.md section 4, step 6), and after it returns the reactor's own handler runs as
    before. A second signal stops right away.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue
        signal.signal(signum, _shutdown_handler(loop, hub, previous))


def _shutdown_handler(
    loop: asyncio.AbstractEventLoop, hub: Drains, previous: Callable[..., Any]
) -> Callable[[int, Any], None]:
    started = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal started
        if started:  # a second signal: stop right away
            previous(signum, frame)
            return
        started = True

        async def close_then_stop() -> None:
            try:
                await hub.shut_down()
            finally:
                previous(signum, None)

        loop.call_soon_threadsafe(lambda: loop.create_task(close_then_stop()))

    return handler
