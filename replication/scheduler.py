"""The in-server maintenance schedule: tombstone GC and journal pruning, every
DATAGATE MAINTENANCE_INTERVAL seconds (0 turns it off, the default, and off in tests).

One asyncio task per server process. Daphne does not speak the ASGI lifespan protocol, so
there is no start-up hook: `MaintenanceStarter` wraps the ASGI application and starts the task
on the first connection of any kind (an HTTP request, a websocket, or a lifespan start-up where
a server sends one). Each round runs in a worker thread of its own (`thread_sensitive=False`),
so a long GC never holds up the consumers' database calls, and closes that thread's database
connection afterwards. Several processes may run the schedule: a job runs only when no process
started it within the last interval (`maintenance.maintenance_due`), and GC and pruning are
safe to repeat anyway (one transaction per collection, under the collection's row lock).
Each run is recorded as a `MaintenanceRun`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from replication.maintenance import maintenance_scheduled_run

logger = logging.getLogger(__name__)

# Seconds after start-up before the first round, so the server serves first.
FIRST_ROUND_DELAY = 1.0

_task: asyncio.Task[None] | None = None


def maintenance_interval() -> float:
    return float(settings.DATAGATE["MAINTENANCE_INTERVAL"])


def _round(interval: float) -> None:
    try:
        maintenance_scheduled_run(interval_seconds=interval)
    finally:
        connection.close()


async def _schedule(interval: float) -> None:
    await asyncio.sleep(min(FIRST_ROUND_DELAY, interval))
    while True:
        try:
            await sync_to_async(_round, thread_sensitive=False)(interval)
        except Exception:  # recorded on the run (DG-7002); the schedule goes on
            logger.exception("scheduled maintenance failed")
        await asyncio.sleep(interval)


def maintenance_schedule_start() -> asyncio.Task[None] | None:
    """Start this process's schedule on the running loop, once; None when it is off."""
    global _task
    interval = maintenance_interval()
    if interval <= 0:
        return None
    if _task is not None and not _task.done():
        return _task
    _task = asyncio.get_running_loop().create_task(_schedule(interval), name="dg-maintenance")
    logger.info("maintenance runs every %s s in this process", interval)
    return _task


async def maintenance_schedule_stop() -> None:
    """Stop this process's schedule (tests; a server just exits)."""
    global _task
    task, _task = _task, None
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class MaintenanceStarter:
    """ASGI middleware: the first connection of a process starts the maintenance schedule."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.started = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if not self.started:
            self.started = True
            maintenance_schedule_start()
        return await self.app(scope, receive, send)
