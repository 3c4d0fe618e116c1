"""`python -m bench` (`make bench`): run the suite on the embedded default, then on PostgreSQL
and Redis when they are reachable, and record the results.

    make bench                          # full sizes, recorded in bench/results/ and RESULTS.md
    make bench BENCH_ARGS=--quick       # small sizes, a smoke test (printed, not recorded)
    BENCH_QUICK=1 make bench            # the same
    python -m bench --only push_ingest,catch_up --backends sqlite --profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import ROOT, SIZES, as_dict, load, machine_facts, versions
from bench.report import RESULTS_DIR, summary_lines, write_results_md
from bench.run_pass import BENCHMARKS

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/dg_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _prepare_postgres(database_url: str, redis_url: str) -> str | None:
    """Recreate the benchmark database and empty the benchmark Redis database; or say why not."""
    from urllib.parse import urlparse

    from tests.support.external_services import reachable

    if not reachable(database_url, 5432):
        return f"PostgreSQL is not reachable at {database_url}"
    if not reachable(redis_url, 6379):
        return f"Redis is not reachable at {redis_url}"
    import psycopg
    import redis

    parsed = urlparse(database_url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        redis.Redis.from_url(redis_url, socket_timeout=10).flushdb()
    except Exception as exc:
        return f"could not prepare PostgreSQL/Redis: {type(exc).__name__}: {exc}"
    return None


def _run_pass(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {"load_start": load()}
    extra: list[str] = []
    if backend == "postgres":
        reason = _prepare_postgres(args.database_url, args.redis_url)
        if reason:
            print(f"[postgres] skipped: {reason}", file=sys.stderr, flush=True)
            entry["skipped"] = reason
            return entry
        extra = ["--database-url", args.database_url, "--redis-url", args.redis_url]
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    command = [
        sys.executable,
        "-m",
        "bench.run_pass",
        "--backend",
        backend,
        "--only",
        args.only,
        "--out",
        str(out_path),
        *extra,
    ]
    command += ["--sizes", args.mode]
    if args.fanout_replicas:
        command += ["--fanout-replicas", args.fanout_replicas]
    if args.profile:
        command.append("--profile")
    started = time.monotonic()
    try:
        completed = subprocess.run(command, cwd=ROOT, timeout=args.timeout)
        if completed.returncode != 0:
            entry["error"] = f"the {backend} pass exited with {completed.returncode}"
        if out_path.exists() and out_path.stat().st_size:
            entry.update(json.loads(out_path.read_text()))
    except subprocess.TimeoutExpired:
        entry["error"] = f"the {backend} pass did not finish within {args.timeout} s"
    finally:
        with contextlib.suppress(OSError):
            out_path.unlink()
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["load_end"] = load()
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "").lower() in {"1", "true", "yes"},
        help="small sizes, for a smoke test (also BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the smallest sizes (the harness's own test)"
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="benchmarks to run")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite and/or postgres")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--profile", action="store_true", help="sample servers with py-spy")
    parser.add_argument(
        "--fanout-replicas", default="", help="live replicas per fan-out run, e.g. 200 or 50,200"
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write bench/results/*.json and RESULTS.md (default: full runs only)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per pass")
    parser.add_argument("--json", help="also write this run's JSON here")
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.quick = args.quick or args.smoke
    if args.timeout is None:
        args.timeout = 600.0 if args.quick else 3600.0
    for name in args.only.split(","):
        if name.strip() and name.strip() not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    record = (not args.quick) if args.record is None else args.record

    run: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": args.mode,
        "only": args.only,
        "commit": _git_commit(),
        "machine": machine_facts(),
        "versions": versions(),
        "sizes": as_dict(SIZES[args.mode]),
        "load_start": load(),
        "passes": {},
    }
    if args.fanout_replicas:
        run["sizes"]["fanout_replicas"] = [int(n) for n in args.fanout_replicas.split(",")]
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
        run["passes"][backend] = _run_pass(backend, args)
    run["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    run["load_end"] = load()

    print("\n".join(summary_lines(run)))
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    if record:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = run["started"].replace(":", "").replace("+0000", "").replace("+00:00", "")
        path = RESULTS_DIR / f"{stamp}-{run['mode']}.json"
        path.write_text(json.dumps(run, indent=1))
        write_results_md()
        print(f"recorded {path.relative_to(ROOT)} and bench/RESULTS.md")
    failed = any(
        "error" in p or any("error" in b for b in p.get("benchmarks", {}).values())
        for p in run["passes"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
