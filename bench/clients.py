"""Client processes: `python -m bench.clients receive CONFIG_JSON`.

A process opens `count` sockets (at most `concurrency` connects at a time) and keeps them open:
DataGate live replicas (`kind: datagate`: connect, pull, then ack every feed) or plain
receivers of a bare baseline (`kind: bare`). For every document that arrives in a feed it
records the latency from the writer's stamp `t` (wall-clock microseconds, same machine).

`DATAGATE_BENCH_ACK_DELAY_MS=N` (an experiment of issue 21, "fewer frames"): a DataGate
receiver acks lazily, at most one feed.ack per N ms, for the last feed it holds and every
earlier one (docs/protocol.md section 3.4), its receipt the union of theirs.

It talks to its parent in JSON lines on stdout (`ready`, `count`, `result`) and takes words on
stdin: `count` (report progress), `stop` (report and exit). Everything is bounded by the
config's `deadline` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import websockets

from bench.wire import FEED, Session, open_socket, receipt_for


class Receivers:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.kind = config["kind"]
        self.latencies_us: list[int] = []
        self.frames = 0
        self.docs = 0
        self.first_arrival_us = 0
        self.last_arrival_us = 0
        self.connected = 0
        self.failed = 0
        self.closed = 0
        self.errors: list[str] = []
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.record = bool(config.get("record", True))
        self.acks = 0
        self.pending: set[asyncio.Task[None]] = set()  # lazy acks waiting their turn

    async def open_one(self, index: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                if self.kind == "datagate":
                    session = await Session.open(
                        self.config["url"],
                        token=self.config["token"],
                        tenant=self.config["tenant"],
                        collection=self.config["collection"],
                        origin=f"{self.config['prefix']}-{index}",
                    )
                    await session.connect(live=True)
                    await session.pull()
                    socket = session.socket
                    self.readers.append(asyncio.create_task(self.read(socket, session)))
                else:
                    socket = await open_socket(self.config["url"])
                    self.readers.append(asyncio.create_task(self.read(socket, None)))
            except Exception as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                return
            self.sockets.append(socket)
            self.connected += 1

    async def read(self, socket: Any, session: Session | None) -> None:
        record = self.record
        delay = float(os.environ.get("DATAGATE_BENCH_ACK_DELAY_MS", "0")) / 1000
        held: dict[str, Any] = {}  # lazy acks: the last feed's id and the receipts not yet sent

        async def ack_later() -> None:
            await asyncio.sleep(delay)
            if session is None or not held:
                return
            last, receipt = held["id"], held["receipt"]
            held.clear()
            self.acks += 1
            await socket.send(
                json.dumps(
                    session.message("no2.sync.feed.ack", last, receipt=receipt),
                    separators=(",", ":"),
                )
            )

        try:
            async for frame in socket:
                now_us = time.time_ns() // 1000
                message = json.loads(frame)
                if message["header"]["messageType"] != FEED:
                    continue
                self.frames += 1
                changes = message["feed"].get("changeSet") or ()
                for doc in changes:
                    stamp = doc.get("t")
                    if stamp is not None and record:
                        self.latencies_us.append(now_us - stamp)
                self.docs += len(changes)
                if not self.first_arrival_us:
                    self.first_arrival_us = now_us
                self.last_arrival_us = now_us
                if session is not None and delay > 0:
                    receipt = receipt_for(message["feed"])
                    if not held:
                        held["receipt"] = receipt
                        task = asyncio.create_task(ack_later())
                        self.pending.add(task)
                        task.add_done_callback(self.pending.discard)
                    else:
                        for key in ("added", "removed"):
                            held["receipt"][key].extend(receipt[key])
                    held["id"] = message["header"]["id"]
                elif session is not None:
                    self.acks += 1
                    await socket.send(
                        json.dumps(
                            session.message(
                                "no2.sync.feed.ack",
                                message["header"]["id"],
                                receipt=receipt_for(message["feed"]),
                            ),
                            separators=(",", ":"),
                        )
                    )
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:
            if len(self.errors) < 5:
                self.errors.append(f"reader: {type(exc).__name__}: {exc}"[:200])
        self.closed += 1

    def progress(self) -> dict[str, Any]:
        return {"frames": self.frames, "docs": self.docs, "closed": self.closed}

    def result(self) -> dict[str, Any]:
        return {
            "event": "result",
            **self.progress(),
            "connected": self.connected,
            "failed": self.failed,
            "errors": self.errors,
            "first_arrival_us": self.first_arrival_us,
            "last_arrival_us": self.last_arrival_us,
            "latencies_us": self.latencies_us,
            "acks": self.acks,
        }


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def receive(config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(config.get("deadline", 600))
    receivers = Receivers(config)
    gate = asyncio.Semaphore(int(config.get("concurrency", 20)))
    started = time.perf_counter()
    connecting = [
        asyncio.create_task(receivers.open_one(i, gate)) for i in range(int(config["count"]))
    ]
    connect_timeout = min(float(config.get("connect_timeout", 600)), deadline - loop.time())
    _, pending = await asyncio.wait(connecting, timeout=max(1.0, connect_timeout))
    for task in pending:
        task.cancel()
    if pending:
        receivers.failed += len(pending)
        receivers.errors.append(f"{len(pending)} connects still pending after {connect_timeout} s")
    emit(
        {
            "event": "ready",
            "connected": receivers.connected,
            "failed": receivers.failed,
            "errors": receivers.errors,
            "connect_seconds": round(time.perf_counter() - started, 3),
        }
    )
    while loop.time() < deadline:
        remaining = deadline - loop.time()
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), remaining)
        except TimeoutError:
            break
        word = line.strip()
        if word == "count":
            emit({"event": "count", **receivers.progress()})
        elif word in ("stop", ""):
            break
    emit(receivers.result())
    for task in receivers.readers:
        task.cancel()
    for socket in receivers.sockets:
        socket.transport.abort()
    # The stdin reader thread may still block on readline: leave without joining it.
    sys.stdout.flush()
    os._exit(0)


def main() -> int:
    role, raw = sys.argv[1], sys.argv[2]
    if role != "receive":
        print(f"unknown client role {role!r}", file=sys.stderr)
        return 2
    asyncio.run(receive(json.loads(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
