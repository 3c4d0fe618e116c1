"""One pass of the suite on one storage backend, in its own process (Django settings are per
process). `python -m bench` starts it; it prints nothing but progress and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from importlib import import_module
from pathlib import Path
from typing import Any

from bench.harness import SIZES, TENANT, USER, PassContext, load, raise_nofile

BENCHMARKS = (
    "push_ingest",
    "catch_up",
    "fanout",
    "connections",
    "topics",
    "couchdb",
    "ranges",
    "views",
    "servers",
    "processes",
    "connect_path",
)


def _configure_django(backend: str, work_dir: Path, database_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "datagate_site.settings"
    os.environ["DATAGATE_DATA_DIR"] = str(work_dir / "bench-data")
    os.environ["DJANGO_SECRET_KEY"] = "bench-secret-key-not-for-production-use-0123456789abcdef"
    os.environ.pop("DATAGATE_SQLITE_PATH", None)
    os.environ.pop("REDIS_URL", None)  # the bench process rings no bell through Redis itself
    if backend == "postgres":
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


def _fixtures() -> tuple[str, int]:
    """The tenant, a writer-admin user and a long-lived token with every scope."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from accounts.services import access_token_issue, membership_set, tenant_get_or_create

    call_command("migrate", verbosity=0, interactive=False)
    tenant = tenant_get_or_create(slug=TENANT)
    user, _ = get_user_model().objects.get_or_create(username=USER)
    membership_set(user=user, tenant=tenant, role="admin")
    token = access_token_issue(user=user, scopes=["read", "write", "topics"], expires_in=86_400)
    return token, int(user.pk)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_pass")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--fanout-replicas", default="", help="e.g. 200 or 50,200")
    args = parser.parse_args(argv)

    sizes = SIZES[args.sizes]
    if args.fanout_replicas:
        counts = tuple(int(n) for n in args.fanout_replicas.split(","))
        sizes = dataclasses.replace(sizes, fanout_replicas=counts)
    raise_nofile(sizes.connections * 2 + 1024)
    work_dir = Path(tempfile.mkdtemp(prefix=f"datagate-bench-{args.backend}-"))
    _configure_django(args.backend, work_dir, args.database_url)
    token, user_id = _fixtures()
    server_env: dict[str, str] = {"DATAGATE_LOG_LEVEL": "WARNING"}
    if args.redis_url:
        server_env["REDIS_URL"] = args.redis_url
        server_env["DATAGATE_REDIS_PREFIX"] = "dgbench"
    ctx = PassContext(
        backend=args.backend,
        sizes=sizes,
        work_dir=work_dir,
        token=token,
        user_id=user_id,
        server_env=server_env,
        profile=args.profile,
    )
    results: dict[str, Any] = {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        print(f"[{args.backend}] {name} ...", file=sys.stderr, flush=True)
        # What earlier benchmarks left in this client process must not be scanned again by a
        # full collection in the middle of this one's timings (a 100-150 ms pause at --quick
        # sizes, which is what made the SDK's catch-up look 2x slower in issue 15's A/B).
        gc.collect()
        gc.freeze()
        started = time.monotonic()
        entry: dict[str, Any] = {"load_before": load()}
        try:
            module = import_module(f"bench.{name}")
            entry.update(module.run(ctx))
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=8)
        entry["load_after"] = load()
        entry["wall_seconds"] = round(time.monotonic() - started, 1)
        results[name] = entry
        summary = entry.get("skipped") or entry.get("error") or entry.get("headline", "")
        print(f"[{args.backend}] {name}: {summary}", file=sys.stderr, flush=True)
    Path(args.out).write_text(
        json.dumps({"benchmarks": results, "profiles": ctx.profiles, "work_dir": str(work_dir)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
