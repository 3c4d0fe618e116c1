"""A chaos run: start the topology, let the clients work while faults strike, then check.

The run is a sequence of epochs. In each, the clients do random operations for
`epoch_seconds` while the fault schedule (drawn from the seed) strikes; then every fault heals,
the writers go quiet, every client comes online, and the run measures how long each client
takes to hold exactly the server's state (bounded by `convergence_bound`). The topic
consumers must catch up with the topic's last offset within the same bound. At the end the
run reads the server's final state and topic and hands the whole history to the checker.

    python -m chaos --duration 1800 --seed 42       # what `make chaos` runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.checker import Report, check, render
from chaos.clients import (
    COLLECTION,
    TENANT,
    TOPIC,
    Consumer,
    HttpWriter,
    Producer,
    SdkClient,
    WireClient,
    comparable,
    differences,
    http_call,
    wire_body,
)
from chaos.history import History
from chaos.proxy import Proxy
from chaos.topology import Topology

FAULTS = (
    "kill_daphne",
    "kill_redis",
    "terminate_pg",
    "partition",
    "reset",
    "latency",
    "bandwidth",
    "clock_skew",
    "stop_acking",
)
MAX_SKEW_MS = 60_000  # well within the server's DATAGATE_MAX_CLOCK_SKEW_MS (5 minutes)


@dataclass
class Options:
    duration: float = 60.0
    seed: int = 1
    epoch_seconds: float = 25.0
    convergence_bound: float = 60.0
    fault_gap: tuple[float, float] = (1.0, 4.0)
    sdk_replicas: int = 3
    wire_clients: int = 2
    consumers: int = 2
    workdir: Path | None = None
    keep: bool = False


class Run:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.rng = random.Random(options.seed)
        self.history = History(workdir / "history.jsonl")
        self.topology = Topology(
            workdir=workdir,
            postgres_url=os.environ.get(
                "TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"
            ),
        )
        self.proxies: list[Proxy] = []
        self.clients: list[Any] = []
        self.active_faults: dict[str, Any] = {}
        # Every kind of fault once, in a seeded order, before the schedule draws freely: even
        # the short CI run meets each of them.
        self.tour = list(FAULTS)
        self.rng.shuffle(self.tour)

    # --- the whole run ------------------------------------------------------------------------

    async def run(self) -> Report:
        options = self.options
        self.history.record(
            "run",
            seed=options.seed,
            duration=options.duration,
            epoch_seconds=options.epoch_seconds,
            convergence_bound=options.convergence_bound,
        )
        await asyncio.to_thread(self.topology.start)
        try:
            for daphne in self.topology.daphnes:
                self.proxies.append(await Proxy(target_port=daphne.port).start())
            await self._setup_clients()
            stop = asyncio.Event()
            tasks = [asyncio.create_task(client.run(stop)) for client in self.clients]
            started = time.monotonic()
            epoch = 0
            while time.monotonic() - started < options.duration:
                epoch += 1
                left = options.duration - (time.monotonic() - started)
                await self._chaos(min(options.epoch_seconds, max(left, 5.0)))
                await self._converge(epoch)
                self.history.flush()
            stop.set()
            await asyncio.wait(tasks, timeout=30)
            await self._final()
        finally:
            for proxy in self.proxies:
                await proxy.close()
            for client in self.clients:
                if isinstance(client, SdkClient):
                    with contextlib.suppress(Exception):
                        await client.replica.close()
            await asyncio.to_thread(self.topology.stop)
            self.history.close()
        return check(self.history.events)

    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p.listen_port}" for p in self.proxies]

    async def _setup_clients(self) -> None:
        from datagate_replica.topics import TopicsClient

        token, rng, history = self.topology.token, self.rng, self.history
        async with TopicsClient(self.urls()[0], tenant=TENANT, token=token, device="setup") as c:
            await c.create(TOPIC, page_size=20)
        for n in range(self.options.sdk_replicas):
            self.clients.append(
                SdkClient(
                    f"sdk{n}",
                    history,
                    random.Random(rng.random()),
                    urls=self.urls(),
                    token=token,
                    path=self.workdir / f"sdk{n}.sqlite3",
                )
            )
        for n in range(self.options.wire_clients):
            self.clients.append(
                WireClient(
                    f"wire{n}",
                    history,
                    random.Random(rng.random()),
                    urls=self.urls(),
                    token=token,
                )
            )
        self.clients.append(
            HttpWriter(
                "http",
                history,
                random.Random(rng.random()),
                ports=[p.listen_port for p in self.proxies],
                token=token,
            )
        )
        self.clients.append(
            Producer(
                "producer",
                history,
                random.Random(rng.random()),
                urls=self.urls(),
                token=token,
            )
        )
        for n in range(self.options.consumers):
            self.clients.append(
                Consumer(
                    f"consumer{n}",
                    history,
                    random.Random(rng.random()),
                    urls=self.urls(),
                    token=token,
                )
            )

    # --- faults -------------------------------------------------------------------------------

    async def _chaos(self, seconds: float) -> None:
        for client in self.clients:
            client.quiet.clear()
        deadline = time.monotonic() + seconds
        running: set[asyncio.Task[None]] = set()
        while True:
            gap = self.rng.uniform(*self.options.fault_gap)
            if time.monotonic() + gap >= deadline:
                break
            await asyncio.sleep(gap)
            fault = self.tour.pop() if self.tour else self.rng.choice(FAULTS)
            hold = self.rng.uniform(0.5, min(8.0, max(1.0, deadline - time.monotonic())))
            running.add(asyncio.create_task(self._fault(fault, hold)))
            running = {task for task in running if not task.done()}
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        # Every fault heals before the convergence check.
        if running:
            await asyncio.wait(running, timeout=60)

    def _busy(self, fault: str) -> None:
        """The target already has a fault: a fault of the tour is tried again later."""
        if fault not in self.tour and not self._toured(fault):
            self.tour.insert(0, fault)

    def _toured(self, fault: str) -> bool:
        return any(
            e["kind"] == "fault" and e["fault"] == fault and e["phase"] == "start"
            for e in self.history.events
        )

    async def _fault(self, fault: str, hold: float) -> None:
        rng = self.rng
        if fault in ("kill_daphne",):
            daphne = rng.choice(self.topology.daphnes)
            if not daphne.alive or daphne.name in self.active_faults:
                return self._busy(fault)
            self.active_faults[daphne.name] = fault
            self.history.record("fault", fault=fault, phase="start", target=daphne.name)
            try:
                await asyncio.to_thread(daphne.kill)
                await asyncio.sleep(hold)
            finally:
                await asyncio.to_thread(daphne.start)
                self.active_faults.pop(daphne.name, None)
                self.history.record("fault", fault=fault, phase="heal", target=daphne.name)
        elif fault == "kill_redis":
            redis = self.topology.redis
            if "redis" in self.active_faults:
                return self._busy(fault)
            self.active_faults["redis"] = fault
            self.history.record("fault", fault=fault, phase="start", target="redis")
            try:
                await asyncio.to_thread(redis.kill)
                await asyncio.sleep(hold)
            finally:
                await asyncio.to_thread(redis.start)
                self.active_faults.pop("redis", None)
                self.history.record("fault", fault=fault, phase="heal", target="redis")
        elif fault == "terminate_pg":
            count = await asyncio.to_thread(self.topology.terminate_backends)
            self.history.record("fault", fault=fault, phase="start", target=f"{count} backends")
            self.history.record("fault", fault=fault, phase="heal", target=f"{count} backends")
        elif fault in ("partition", "reset", "latency", "bandwidth"):
            index = rng.randrange(len(self.proxies))
            proxy = self.proxies[index]
            target = f"proxy-{'ab'[index]}"
            if fault == "reset":
                proxy.reset()
                self.history.record("fault", fault=fault, phase="start", target=target)
                self.history.record("fault", fault=fault, phase="heal", target=target)
                return
            if target in self.active_faults:
                return self._busy(fault)
            self.active_faults[target] = fault
            self.history.record("fault", fault=fault, phase="start", target=target)
            if fault == "partition":
                proxy.partition()
            elif fault == "latency":
                proxy.latency = rng.uniform(0.05, 0.5)
            else:
                proxy.bandwidth = rng.choice([2_000, 20_000, 200_000])
            try:
                await asyncio.sleep(hold)
            finally:
                proxy.heal()
                self.active_faults.pop(target, None)
                self.history.record("fault", fault=fault, phase="heal", target=target)
        elif fault == "clock_skew":
            replicas = [c for c in self.clients if isinstance(c, SdkClient)]
            client = rng.choice(replicas)
            skew = rng.randint(-MAX_SKEW_MS, MAX_SKEW_MS)
            self.history.record(
                "fault", fault=fault, phase="start", target=client.name, skew_ms=skew
            )
            client.skew(skew)
            try:
                await asyncio.sleep(hold)
            finally:
                client.skew(0)
                self.history.record("fault", fault=fault, phase="heal", target=client.name)
        elif fault == "stop_acking":
            consumers = [c for c in self.clients if isinstance(c, Consumer)]
            consumer = rng.choice(consumers)
            if consumer.stalled:
                return self._busy(fault)
            consumer.stalled = True
            self.history.record("fault", fault=fault, phase="start", target=consumer.name)
            try:
                await asyncio.sleep(hold * 2)
            finally:
                consumer.stalled = False
                self.history.record("fault", fault=fault, phase="heal", target=consumer.name)

    # --- convergence --------------------------------------------------------------------------

    async def server_state(self) -> tuple[str, dict[str, Any], dict[str, int]]:
        """The server's whole state, read by a fresh replica pulling from zero (no proxy)."""
        from tests.support.wire_replica import WebsocketsTransport, WireReplica

        daphne = self.topology.daphnes[0]
        transport = await WebsocketsTransport.open(
            f"ws://127.0.0.1:{daphne.port}/ws/datagate/{TENANT}/{COLLECTION}/"
        )
        reader = WireReplica(
            transport=transport,
            token=self.topology.token,
            tenant=TENANT,
            collection=COLLECTION,
            origin="chaos-checker",
            capabilities=[],
            timeout=20.0,
        )
        documents: dict[str, Any] = {}
        tombstones: dict[str, int] = {}
        try:
            await reader.connect()
            pulled = await reader.pull()
            for chunk in pulled["chunks"]:
                for doc in chunk["feed"].get("changeSet", []):
                    documents[doc["_id"]] = doc
                    tombstones.pop(doc["_id"], None)
                for doc_id, stamp in chunk["feed"].get("tombstoneMap", {}).items():
                    tombstones[doc_id] = stamp
                    documents.pop(doc_id, None)
        finally:
            with contextlib.suppress(Exception):
                await transport.close()
        shaped = {
            k: {"modified": d["_modified"], "revision": d["_revision"], "body": wire_body(d)}
            for k, d in documents.items()
        }
        return comparable(shaped, tombstones), documents, tombstones

    async def _converge(self, epoch: int) -> None:
        bound = self.options.convergence_bound
        for client in self.clients:
            client.quiet.set()
        healed = time.monotonic()
        self.history.record("heal", epoch=epoch)
        topics = asyncio.create_task(self._topics_caught_up(epoch, healed))
        replicas = [c for c in self.clients if isinstance(c, SdkClient | WireClient)]
        for client in replicas:
            if isinstance(client, SdkClient):
                client.offline_until = 0.0
                await client.go_online()
        matched_since: dict[str, float | None] = {c.name: None for c in replicas}
        done: set[str] = set()
        detail: dict[str, str] = {}
        while time.monotonic() - healed < bound and len(done) < len(replicas):
            try:
                server, _, _ = await self.server_state()
            except Exception as exc:
                detail["server"] = f"server state unreadable: {exc}"
                await asyncio.sleep(1.0)
                continue
            for client in replicas:
                if isinstance(client, SdkClient):
                    await client.go_online()  # in case it was going offline as quiet began
                if isinstance(client, WireClient):
                    try:
                        await client.sync()
                    except Exception as exc:
                        detail[client.name] = f"sync failed: {exc!r}"[:200]
                        continue
                state = client.state()
                if state == server and client.pending() == 0:
                    if matched_since[client.name] is None:
                        matched_since[client.name] = time.monotonic() - healed
                else:
                    matched_since[client.name] = None
                    detail[client.name] = (
                        f"pending {client.pending()}, {differences(state, server)}"
                    )
            done = {name for name, since in matched_since.items() if since is not None}
            if len(done) < len(replicas):
                await asyncio.sleep(0.5)
        for client in replicas:
            since = matched_since[client.name]
            self.history.record(
                "converged",
                client=client.name,
                epoch=epoch,
                seconds=None if since is None else round(since, 3),
                detail=None if since is not None else detail.get(client.name),
            )
        await topics

    async def _topics_caught_up(self, epoch: int, healed: float) -> None:
        bound = self.options.convergence_bound
        consumers = [c for c in self.clients if isinstance(c, Consumer)]
        producer = next(c for c in self.clients if isinstance(c, Producer))
        while producer.pending_ids and time.monotonic() - healed < bound:
            await asyncio.sleep(0.3)
        last = max((e["offset"] for e in self.history.events if e["kind"] == "publish"), default=0)
        waiting = {c.name: c for c in consumers}
        reached: dict[str, float] = {}
        while waiting and time.monotonic() - healed < bound:
            for name, consumer in list(waiting.items()):
                if consumer.committed >= last:
                    reached[name] = time.monotonic() - healed
                    del waiting[name]
            if waiting:
                await asyncio.sleep(0.3)
        for consumer in consumers:
            self.history.record(
                "converged",
                client=consumer.name,
                epoch=epoch,
                seconds=None if consumer.name in waiting else round(reached[consumer.name], 3),
                detail=f"committed {consumer.committed} of {last}",
            )

    async def _final(self) -> None:
        _, documents, tombstones = await self.server_state()
        self.history.record(
            "final_state",
            documents={
                k: {
                    "key": [d["_modified"], 0, d["_revision"], d["_origin"]],
                    "value": wire_body(d),
                }
                for k, d in documents.items()
            },
            tombstones=tombstones,
        )
        port = self.topology.daphnes[0].port
        messages: dict[int, str] = {}
        start = 1
        while True:
            status, page = await asyncio.to_thread(
                http_call,
                port,
                "GET",
                f"/api/v1/tenants/{TENANT}/topics/{TOPIC}/messages/?start={start}&limit=1000"
                "&device=chaos-checker",
                self.topology.token,
            )
            if status != 200:
                raise RuntimeError(f"reading the topic failed: {status} {page}")
            for message in page["messages"]:
                messages[int(message["offset"])] = message["messageId"]
            if not page.get("next"):
                break
            start = int(page["next"])
        self.history.record("final_topic", topic=TOPIC, messages=messages)
        tracebacks = self.topology.logs_with("Traceback")
        self.history.record("server_logs", tracebacks=len(tracebacks))


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed")
    parser.add_argument("--epoch", type=float, default=25.0, help="seconds between heals")
    parser.add_argument("--bound", type=float, default=60.0, help="convergence bound (s)")
    parser.add_argument("--sdk-replicas", type=int, default=3)
    parser.add_argument("--wire-clients", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1 << 30)
    return Options(
        duration=args.duration,
        seed=seed,
        epoch_seconds=args.epoch,
        convergence_bound=args.bound,
        sdk_replicas=args.sdk_replicas,
        wire_clients=args.wire_clients,
        consumers=args.consumers,
        workdir=args.workdir,
        keep=args.workdir is not None,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "datagate_site.settings")
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{options.seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: seed {options.seed}, {options.duration:.0f} s, history in {workdir}", flush=True)
    run = Run(options, workdir)
    report = asyncio.run(run.run())
    text = render(report, run.history.events)
    print(text, flush=True)
    (workdir / "report.json").write_text(json.dumps(report.summary(), indent=2))
    if report.ok and not options.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report.ok:
        print(f"history and server logs kept in {workdir}", flush=True)
    return 0 if report.ok else 1
