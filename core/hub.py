"""The process hub: one channel-layer listener per process for every live feed.

Fan-out is where the time goes (docs/STYLE, "Fan-out"), so no session listens to the channel
layer itself. Each process (each event loop: daphne runs one per process, tests may run
several) has one `Hub`. It owns one channel on the layer, joins each group once however many
local sessions want it, hears every doorbell on that one channel and hands each message to the
adapter that registered its type. The adapters hold what the feeds mean:

- `replication.live.LiveFeeds`: collection feeds of sync sessions, CouchDB `_changes` tails and
  GraphQL `documentChanges` subscriptions, plus operator requests to replicas;
- `topics.doorbell.TopicFeeds`: topic subscribers (websocket and GraphQL `topicMessages`).

The database is the truth and a bell only says "collection 7 is at seq 1042" (docs/decisions/
0002-the-database-is-the-truth.md). So the hub is built to lose bells safely:

- **One poll fallback.** Each adapter registers a poll with its own interval (`every`); the hub
  runs it whether or not the layer works. A lost bell only delays a feed by that interval.
- **One rejoin rule** (`rejoin_interval`). A group whose join failed (Redis down) is joined
  again every `JOIN_RETRY` seconds until it works (found by `make chaos`); and every group is
  re-joined every `group_expiry / 3` seconds, at most every `REJOIN_MAX` (60 s). The third
  leaves two missed rejoins before a membership lapses; the 60 s cap is for a Redis that
  restarted without its data and forgot every group at once: the bells ring again within a
  minute, and the poll delivers meanwhile. One GROUP ADD per group and process a minute costs
  Redis nothing worth measuring.
- **One naming convention** (`group_name`): `dg.<kind>.<key>`, e.g. `dg.collection.7`,
  `dg.topic.5`, and the process's channel keeps the layer's default prefix (see `_channel`).

The hub also knows every open session of the process (sync, topics, CouchDB tails, GraphQL),
so that a server shutdown (SIGTERM or SIGINT under daphne) can send each a Disconnect and close
it with 1001 before daphne cancels the applications (`core.shutdown.install_shutdown_handler`
calls `Hub.shut_down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from core.shutdown import DRAINING, install_shutdown_handler

logger = logging.getLogger(__name__)

# Seconds between attempts to join a group whose join failed (the layer was down).
JOIN_RETRY = 1.0
# The longest time between two joins of the same group (module docstring, "One rejoin rule").
REJOIN_MAX = 60.0
# How long a shutdown waits for sessions to close after their Disconnect before daphne goes on.
SHUTDOWN_GRACE = 3.0

Handler = Callable[[dict[str, Any]], None]
Poll = Callable[[], Awaitable[None]]
A = TypeVar("A")


def group_name(kind: str, key: int | str) -> str:
    """The layer group of one thing that moves: `dg.<kind>.<key>` (`dg.collection.7`)."""
    return f"dg.{kind}.{key}"


def rejoin_interval() -> float:
    """Seconds between two joins of every group: a third of the layer's `group_expiry`, at
    least 1 s and at most `REJOIN_MAX` (module docstring)."""
    layers: dict[str, Any] = getattr(settings, "CHANNEL_LAYERS", {})
    for config in layers.values():
        expiry = config.get("CONFIG", {}).get("group_expiry")
        if expiry:
            return max(1.0, min(float(expiry) / 3, REJOIN_MAX))
    return REJOIN_MAX


class HubSession(Protocol):
    """What the hub needs of every open session: a way to close it on shutdown."""

    async def shut_down(self, retry_after_ms: int | None = None) -> None: ...


class Hub:
    """One per event loop (= per daphne process): see the module docstring."""

    def __init__(self, layer: BaseChannelLayer | None) -> None:
        self.layer = layer
        self.channel: str | None = None
        # Groups wanted by this process (how many adapters' feeds want each), and those whose
        # last join failed.
        self.groups: Counter[str] = Counter()
        self.unjoined: set[str] = set()
        self.handlers: dict[str, Handler] = {}
        self.adapters: dict[Callable[[Hub], Any], Any] = {}
        self.sessions: set[HubSession] = set()
        self.shutting_down = False
        self._all_gone = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    # --- adapters ------------------------------------------------------------------------

    def adapter(self, kind: Callable[[Hub], A]) -> A:
        """This hub's one instance of an adapter class (made with the hub on first use)."""
        found = self.adapters.get(kind)
        if found is None:
            found = self.adapters[kind] = kind(self)
        return cast(A, found)

    def on(self, message_type: str, handler: Handler) -> None:
        """Layer messages of this type go to `handler` (called on the loop; must not block)."""
        self.handlers[message_type] = handler

    def every(self, name: str, interval: Callable[[], float], poll: Poll) -> None:
        """Run `poll` every `interval()` seconds (read anew each time) while the hub lives: the
        fallback that makes a lost bell only a delay."""
        self._tasks.append(asyncio.create_task(self._poll(interval, poll), name=f"hub-{name}"))

    async def _poll(self, interval: Callable[[], float], poll: Poll) -> None:
        while True:
            await asyncio.sleep(interval())
            try:
                await poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("hub poll failed; retrying", exc_info=True)

    # --- group membership ----------------------------------------------------------------

    async def group_join(self, group: str) -> bool:
        """Join `group` for one more local interest. False when the layer refused (it is joined
        again every JOIN_RETRY seconds meanwhile): a session never fails for a deaf doorbell."""
        self.groups[group] += 1
        if self._keeper is None and self.layer is not None:
            self._keeper = asyncio.create_task(self._keep_joined(), name="hub-rejoin")
        if self.groups[group] > 1 and group not in self.unjoined:
            return True
        return await self._join(group)

    async def group_leave(self, group: str) -> None:
        """One local interest in `group` less; the last one leaves the group."""
        if self.groups[group] > 1:
            self.groups[group] -= 1
            return
        self.groups.pop(group, None)
        self.unjoined.discard(group)
        if self.layer is not None and self.channel is not None:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(group, self.channel)

    async def _join(self, group: str, *, quiet: bool = False) -> bool:
        if self.layer is None:
            return False
        try:
            await self._channel()
            assert self.channel is not None
            await self.layer.group_add(group, self.channel)
        except Exception:
            # Without the layer, feeds still arrive by the adapters' polls.
            if quiet:
                logger.debug("could not join %s again", group, exc_info=True)
            else:
                logger.warning("could not join %s", group, exc_info=True)
            if group in self.groups:
                self.unjoined.add(group)
            return False
        self.unjoined.discard(group)
        return True

    async def _channel(self) -> None:
        """The process's one channel, made on first use, and its reader.

        The layer's default prefix on purpose: channels_redis receives every process-local
        ("!") channel through one shared Redis key per prefix and one lock, so a channel with
        another prefix is only read while it happens to hold that lock.
        """
        if self.layer is not None and self.channel is None:
            self.channel = await self.layer.new_channel()
            self._reader = asyncio.create_task(self._read(), name="hub-doorbell")

    async def _keep_joined(self) -> None:
        """The rejoin rule (module docstring): failed joins every JOIN_RETRY seconds, every
        group every `rejoin_interval()`."""
        since = 0.0
        while True:
            await asyncio.sleep(JOIN_RETRY)
            since += JOIN_RETRY
            if since >= rejoin_interval():
                since = 0.0
                wanted = list(self.groups)
            else:
                wanted = [g for g in self.groups if g in self.unjoined]
            for group in wanted:
                if group in self.groups and not await self._join(group, quiet=True):
                    break  # still down: the next round tries again

    async def _read(self) -> None:
        assert self.layer is not None and self.channel is not None
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("doorbell receive failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            handler = self.handlers.get(str(message.get("type")))
            if handler is None:
                continue
            try:
                handler(message)
            except Exception:
                logger.exception("doorbell handler for %s failed", message.get("type"))

    def close(self) -> None:
        """Stop the hub's tasks (tests; a daphne process's hub lives as long as its loop)."""
        for task in [*self._tasks, self._reader, self._keeper]:
            if task is not None:
                task.cancel()
        self._tasks, self._reader, self._keeper = [], None, None

    # --- sessions and shutdown -----------------------------------------------------------

    def register(self, session: HubSession) -> None:
        self.sessions.add(session)

    def unregister(self, session: HubSession) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._all_gone.set()

    def retry_hint_ms(self) -> int:
        """When a session of a stopping server should come back: uniform over DRAIN_SPREAD,
        so a process's replicas reconnect spread over a few seconds, not in one instant."""
        spread = max(0.0, float(settings.DATAGATE["DRAIN_SPREAD"]))
        return int(random.uniform(0, spread * 1000))  # noqa: S311 - jitter, not security

    async def shut_down(self) -> None:
        """Drain: refuse new sessions and answer /readyz 503 (`DRAINING`), wait DRAIN_DELAY
        for the load balancer to notice, then send every session Disconnect with a retry hint
        and close 1001; wait a little for them to go (docs/deploy.md)."""
        DRAINING.set()
        self.shutting_down = True
        delay = float(settings.DATAGATE["DRAIN_DELAY"])
        if delay > 0:
            logger.info("draining: /readyz answers 503; closing sessions in %.1f s", delay)
            await asyncio.sleep(delay)
        sessions = list(self.sessions)
        logger.info("shutting down: closing %d replication sessions", len(sessions))
        await asyncio.gather(
            *(s.shut_down(self.retry_hint_ms()) for s in sessions), return_exceptions=True
        )
        if self.sessions:
            self._all_gone.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), SHUTDOWN_GRACE)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def process_hub() -> Hub:
    """This event loop's hub (one per daphne process; one per test event loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = Hub(get_channel_layer())
        _hubs[loop] = hub
        install_shutdown_handler(loop, hub)
    return hub
