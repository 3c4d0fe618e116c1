"""What every benchmark shares: sizes, the pass context, servers, client processes, facts.

Every loop in the suite is bounded in count and in time (the `deadline` helpers below), and
every socket goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"
USER = "bench"


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is. `FULL` is what the issue asks for; `QUICK` smoke-tests."""

    push_docs: int
    push_chunk: int
    push_window: int
    catchup_docs: int
    fanout_replicas: tuple[int, ...]
    fanout_rate: int
    fanout_seconds: float
    connections: int
    connections_hold: float
    client_processes: int
    topic_messages: int
    # bench/couchdb.py: PouchDB against DataGate and pouchdb-server.
    couch_push_docs: int = 50_000
    couch_catchup_docs: int = 100_000
    couch_live_replicas: int = 50
    couch_live_rate: int = 100
    couch_live_seconds: float = 10.0
    # bench/ranges.py: repair by range checks after a restore.
    ranges_docs: int = 100_000
    ranges_differences: int = 100
    # bench/views.py: catch-up of a data view selecting one document in `views_every`.
    views_docs: int = 100_000
    views_every: int = 100
    # bench/views.py: live fan-out through a view against the whole collection, alternated
    # `views_fanout_rounds` times in one pass.
    views_fanout_replicas: int = 200
    views_fanout_rounds: int = 2
    # bench/servers.py: daphne, uvicorn and granian side by side.
    servers_replicas: int = 200
    servers_connections: int = 2_000
    # bench/processes.py: one daphne against two on PostgreSQL + Redis.
    processes_replicas: tuple[int, ...] = (200, 1000)
    # bench/connect_path.py: calls of each step of a Connect, in process.
    connect_path_calls: int = 1_000


FULL = Sizes(
    push_docs=50_000,
    push_chunk=500,
    push_window=2,
    catchup_docs=100_000,
    fanout_replicas=(50, 200, 1000),
    fanout_rate=100,
    fanout_seconds=10.0,
    connections=10_000,
    connections_hold=20.0,
    client_processes=4,
    topic_messages=20_000,
)
QUICK = Sizes(
    push_docs=2_000,
    push_chunk=500,
    push_window=2,
    catchup_docs=2_000,
    fanout_replicas=(10,),
    fanout_rate=50,
    fanout_seconds=1.0,
    connections=100,
    connections_hold=1.0,
    client_processes=2,
    topic_messages=500,
    couch_push_docs=2_000,
    couch_catchup_docs=2_000,
    couch_live_replicas=5,
    couch_live_rate=20,
    couch_live_seconds=2.0,
    ranges_docs=5_000,
    ranges_differences=20,
    views_docs=10_000,
    views_fanout_replicas=10,
    views_fanout_rounds=1,
    servers_replicas=50,
    servers_connections=200,
    processes_replicas=(50,),
    connect_path_calls=200,
)
# The smallest run that still goes through every step: the harness's own test.
SMOKE = Sizes(
    push_docs=400,
    push_chunk=100,
    push_window=2,
    catchup_docs=400,
    fanout_replicas=(4,),
    fanout_rate=20,
    fanout_seconds=0.5,
    connections=20,
    connections_hold=0.5,
    client_processes=1,
    topic_messages=100,
    couch_push_docs=200,
    couch_catchup_docs=200,
    couch_live_replicas=2,
    couch_live_rate=10,
    couch_live_seconds=1.0,
    ranges_docs=400,
    ranges_differences=5,
    views_docs=1_000,
    views_every=10,
    views_fanout_replicas=4,
    views_fanout_rounds=1,
    servers_replicas=4,
    servers_connections=20,
    processes_replicas=(4,),
    connect_path_calls=20,
)
SIZES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


@dataclass
class PassContext:
    """One pass of the suite on one storage backend, inside its own process."""

    backend: str  # "sqlite" or "postgres"
    sizes: Sizes
    work_dir: Path
    token: str
    user_id: int
    server_env: dict[str, str] = field(default_factory=dict)
    profile: bool = False
    profiles: list[str] = field(default_factory=list)

    def collection_url(self, port: int, collection: str) -> str:
        return f"ws://127.0.0.1:{port}/ws/datagate/{TENANT}/{collection}/"


# --- facts about the machine and the run ------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("django", "channels", "daphne", "twisted", "websockets", "channels-redis"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    return found


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def raise_nofile(wanted: int) -> int:
    """Raise the open-files limit towards `wanted` (up to the hard limit); return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(wanted, hard if hard != resource.RLIM_INFINITY else wanted))
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (granian serves from a worker process of its own)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    queue.extend(int(c) for c in (task / "children").read_text().split())
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its living descendants."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += rss_bytes(member)
    return total


# --- numbers ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (which need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    if not latencies_ms:
        return {"count": 0}
    ordered = sorted(latencies_ms)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    if not value or not baseline:
        return None
    return round(value / baseline, 3)


class Deadline:
    """A bound in time for a loop: `while deadline.left():` never runs forever."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start


# --- documents --------------------------------------------------------------------------------

_FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 2


def make_document(doc_id: str, index: int, origin: str, modified: int) -> dict[str, Any]:
    """A document of about 200 bytes of JSON, the size the issue names."""
    return {
        "_id": doc_id,
        "_revision": 1,
        "_modified": modified,
        "_origin": origin,
        "title": f"note {index}",
        "n": index,
        "done": index % 3 == 0,
        "text": _FILLER[: 90 + index % 20],
    }


def make_documents(count: int, *, prefix: str, origin: str) -> list[dict[str, Any]]:
    stamp = time.time_ns() // 1_000_000
    return [make_document(f"{prefix}-{i:07d}", i, origin, stamp) for i in range(count)]


# --- servers ----------------------------------------------------------------------------------


def daphne(ctx: PassContext, name: str, application: str = "datagate_site.asgi:application") -> Any:
    """A fresh daphne process on this pass's database and channel layer."""
    from tests.support.server_processes import DaphneServer

    return DaphneServer.start(
        tmp_path=ctx.work_dir, extra_env=ctx.server_env, name=name, application=application
    )


def asgi_server(
    ctx: PassContext,
    kind: str,
    name: str,
    application: str = "datagate_site.asgi:application",
    extra_env: dict[str, str] | None = None,
) -> Any:
    """A fresh `kind` server (daphne, uvicorn or granian: SERVERS in
    tests/support/server_processes.py)."""
    from tests.support.server_processes import SERVERS

    return SERVERS[kind].start(
        tmp_path=ctx.work_dir,
        extra_env={**ctx.server_env, **(extra_env or {})},
        name=name,
        application=application,
    )


@contextlib.contextmanager
def running(server: Any) -> Iterator[Any]:
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def profiled(ctx: PassContext, pid: int, name: str, seconds: float) -> Iterator[None]:
    """With --profile, sample `pid` with py-spy while the block runs (a flame graph file)."""
    if not ctx.profile:
        yield
        return
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = ROOT / "bench" / "results" / "profiles" / f"{ctx.backend}-{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--format",
            "raw",
            "--rate",
            "200",
            # BENCH_PROFILE_GIL=1: only the thread holding the GIL, so that two busy threads
            # (the event loop and the database thread) are not both counted while one waits.
            *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if out.exists():
            ctx.profiles.append(str(out.relative_to(ROOT)))


# --- client processes -------------------------------------------------------------------------


class ClientProcess:
    """A `python -m bench.clients ROLE` process: JSON lines out, commands in on stdin."""

    def __init__(self, process: asyncio.subprocess.Process, label: str) -> None:
        self.process = process
        self.label = label

    @classmethod
    async def start(cls, role: str, config: dict[str, Any], label: str) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.clients",
            role,
            json.dumps(config),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,
        )
        return cls(process, label)

    async def event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the client prints (its `event` names what it is)."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            code = await asyncio.wait_for(self.process.wait(), 10)
            raise RuntimeError(f"client {self.label} exited with {code} before reporting")
        result: dict[str, Any] = json.loads(line)
        return result

    async def command(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(word.encode() + b"\n")
        await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


async def start_clients(
    role: str, configs: list[dict[str, Any]], *, ready_timeout: float
) -> tuple[list[ClientProcess], list[dict[str, Any]]]:
    """Start one client process per config and wait until each reports `ready`."""
    clients = [
        await ClientProcess.start(role, config, f"{role}-{i}") for i, config in enumerate(configs)
    ]
    try:
        ready = await asyncio.gather(*(c.event(ready_timeout) for c in clients))
    except BaseException:
        await asyncio.gather(*(c.stop() for c in clients))
        raise
    return clients, ready


def split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible (no zero parts unless total < parts)."""
    parts = max(1, min(parts, total)) if total else 1
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def as_dict(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)
