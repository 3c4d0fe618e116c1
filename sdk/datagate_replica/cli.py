"""The `datagate-replica` command line: a local replica of one collection, synced on demand.

Every command works on the local file; only `sync` and `watch` talk to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from datagate_replica.cli_topics import TOPIC_COMMANDS, add_topic_commands, run_topic_command
from datagate_replica.replica import AsyncReplica, default_path
from datagate_replica.store import Change, StoreError
from datagate_replica.sync import SyncError, check_url

DESCRIPTION = """\
A local replica of one DataGate collection, kept in a SQLite file. put/get/rm/ls work offline;
`sync` pushes local changes and pulls the server's; `watch` stays live and prints every change.
"""

EPILOG = """\
environment variables (options win over them):
  DATAGATE_URL           server URL (default ws://127.0.0.1:8000)
  DATAGATE_TENANT        tenant slug
  DATAGATE_COLLECTION    collection name
  DATAGATE_TOKEN         OAuth2 access token (needed by sync and watch)
  DATAGATE_REPLICA_FILE  local file (default ./<tenant>-<collection>.replica.sqlite3)
  DATAGATE_DEVICE        device name for topic offsets (publish, subscribe; default host name)

examples:
  export DATAGATE_TENANT=acme DATAGATE_COLLECTION=notes DATAGATE_TOKEN=...
  datagate-replica put n1 title=hello 'tags:=["a","b"]'
  datagate-replica put n2 '{"title": "from JSON", "done": false}'
  datagate-replica put n3 - < big.json          # or: put n3 @big.json
  datagate-replica sync
  datagate-replica ls done:=false
  datagate-replica watch
  datagate-replica verify --repair
  datagate-replica publish --create global news '{"title": "hello"}'   # topics (scope topics)
  datagate-replica subscribe news --from beginning --device laptop

exit status: 0 done, 1 not found or the server could not be reached, 2 bad usage.
"""


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes get one line on stderr and exit status 2, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"datagate-replica: error: {message} (see --help)\n")


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(name: str, fallback: str | None = None) -> Any:
        return argparse.SUPPRESS if suppress else os.environ.get(name, fallback)

    group = parser.add_argument_group("replica")
    group.add_argument(
        "--url", default=default("DATAGATE_URL", "ws://127.0.0.1:8000"), help="server URL"
    )
    group.add_argument("--tenant", default=default("DATAGATE_TENANT"), help="tenant slug")
    group.add_argument(
        "--collection", default=default("DATAGATE_COLLECTION"), help="collection name"
    )
    group.add_argument(
        "--token", default=default("DATAGATE_TOKEN"), help="access token (sync, watch)"
    )
    group.add_argument(
        "--file",
        default=default("DATAGATE_REPLICA_FILE"),
        help="local SQLite file (default ./<tenant>-<collection>[-<view>].replica.sqlite3)",
    )
    group.add_argument(
        "--view",
        default=default("DATAGATE_VIEW"),
        help="sync only this data view of the collection (its own file and markers)",
    )
    group.add_argument(
        "--max-frame-bytes",
        type=int,
        default=default("DATAGATE_MAX_FRAME_BYTES"),
        help="the server's DATAGATE_MAX_FRAME_BYTES when it is not 1 MiB (a change must fit "
        "in one frame)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="datagate-replica",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _common_options(sub, suppress=True)
        return sub

    put = command("put", "write a document locally (sent to the server by the next sync)")
    put.add_argument("id", help="document id")
    put.add_argument(
        "fields",
        nargs="*",
        help="a JSON object, name=text and name:=JSON pairs (title=hi count:=3), "
        "- (a JSON object on stdin) or @FILE (a JSON object in FILE)",
    )
    put.add_argument("--merge", action="store_true", help="keep the fields not given")

    get = command("get", "print a document as JSON")
    get.add_argument("id", help="document id")

    rm = command("rm", "delete documents locally (sent to the server by the next sync)")
    rm.add_argument("ids", nargs="+", metavar="id", help="document ids")

    ls = command("ls", "list documents, one JSON object a line")
    ls.add_argument("where", nargs="*", help="field filters: name=text or name:=JSON (equality)")
    ls.add_argument("--limit", type=int, default=None, help="at most this many documents")

    sync = command("sync", "push local changes and pull the server's, once")
    sync.add_argument(
        "--progress", action="store_true", help="always show the push and pull progress"
    )
    sync.add_argument("--quiet", action="store_true", help="no progress, no summary")

    verify = command("verify", "prove by range checks that the replica holds what the server holds")
    verify.add_argument("--repair", action="store_true", help="repair what differs")
    verify.add_argument("--json", action="store_true", help="print the outcome as JSON")

    watch = command("watch", "stay live and print every change as it arrives (Ctrl-C stops)")
    watch.add_argument("--json", action="store_true", help="print changes as JSON objects")
    watch.add_argument(
        "--once",
        action="store_true",
        help="exit with status 1 if the first connection fails instead of retrying",
    )

    status = command("status", "show the markers, the journal size and rejected changes")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    add_topic_commands(commands)  # publish, subscribe (DataGate topics)
    return parser


class UsageError(Exception):
    pass


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source}: not a JSON object ({exc})") from exc
    if not isinstance(value, dict):
        raise UsageError(f"{source}: fields must be a JSON object")
    return value


def parse_fields(items: Sequence[str], stdin: TextIO | None = None) -> dict[str, Any]:
    """`{"a": 1}`, `a=text b:=json`, `-` (JSON on stdin) or `@path` (JSON in a file)."""
    if len(items) == 1 and items[0] == "-":
        return _json_object((stdin or sys.stdin).read(), "stdin")
    if len(items) == 1 and items[0].startswith("@"):
        try:
            text = Path(items[0][1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {items[0][1:]}: {exc.strerror or exc}") from exc
        return _json_object(text, items[0][1:])
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        return _json_object(items[0], "fields")
    fields: dict[str, Any] = {}
    for item in items:
        if ":=" in item and ("=" not in item or item.index(":=") < item.index("=")):
            name, raw = item.split(":=", 1)
            try:
                fields[name] = json.loads(raw)
            except ValueError as exc:
                raise UsageError(f"{item!r}: the value after := must be JSON ({exc})") from exc
        elif "=" in item:
            name, text = item.split("=", 1)
            fields[name] = text
        else:
            raise UsageError(f"{item!r}: expected name=text or name:=JSON")
        if not name:
            raise UsageError(f"{item!r}: a field needs a name")
    return fields


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class ProgressBar:
    """A one-line text progress bar on stderr for pushes and pulls."""

    def __init__(
        self, stream: TextIO, *, always: bool, threshold: int = 1000, label: str = "pulling"
    ) -> None:
        self.stream = stream
        self.label = label
        self.always = always
        self.threshold = threshold
        self.shown = False
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.always and total < self.threshold:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = width if total <= 0 else min(width, width * done // total)
        percent = 100 if total <= 0 else min(100, 100 * done // total)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {done}/{total}"
        )
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def describe(change: Change) -> str:
    if change.deleted:
        return f"{change.source} rm {change.doc_id}"
    fields = {k: v for k, v in (change.document or {}).items() if not k.startswith("_")}
    return f"{change.source} put {change.doc_id} {_dump(fields)}"


def change_json(change: Change) -> str:
    return _dump(
        {
            "source": change.source,
            "id": change.doc_id,
            "deleted": change.deleted,
            "document": change.document,
        }
    )


def open_replica(args: argparse.Namespace, **options: Any) -> AsyncReplica:
    if not args.tenant or not args.collection:
        raise UsageError(
            "--tenant and --collection (or DATAGATE_TENANT/DATAGATE_COLLECTION) are needed"
        )
    view = getattr(args, "view", None) or None
    path = Path(args.file) if args.file else default_path(args.tenant, args.collection, view)
    frame_limit = getattr(args, "max_frame_bytes", None)
    if frame_limit:
        options.setdefault("max_frame_bytes", int(frame_limit))
    return AsyncReplica(
        args.url, args.tenant, args.collection, args.token or "", path=path, view=view, **options
    )


def need_token(args: argparse.Namespace) -> None:
    if not args.token:
        raise UsageError(f"{args.command} talks to the server: give --token or DATAGATE_TOKEN")


def _chain(progress: Any, finish: Any) -> Any:
    """A push progress listener that ends its line when the push is done."""

    def listener(done: int, total: int) -> None:
        progress(done, total)
        if done >= total:
            finish()

    return listener


async def run_sync(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    need_token(args)
    always = args.progress and not args.quiet
    bar = ProgressBar(err, always=always)
    push_bar = ProgressBar(err, always=always, label="pushing")
    replica = open_replica(
        args,
        on_progress=None if args.quiet else bar,
        on_push_progress=None if args.quiet else _chain(push_bar.__call__, push_bar.finish),
    )
    try:
        report = await replica.sync()
    except SyncError as exc:
        push_bar.finish()
        bar.finish()
        err.write(f"datagate-replica: sync failed: {exc}\n")
        return 1
    finally:
        await replica.close()
    bar.finish()
    if not args.quiet:
        out.write(
            f"pushed {report.pushed}, pulled {report.pulled}, rejected {len(report.rejected)}"
            f"{', reset' if report.reset else ''}"
            f"; markers {_dump(report.markers.to_wire())}\n"
        )
        for rejected in report.rejected:
            out.write(f"rejected {rejected.version.doc_id}: {rejected.error}\n")
    return 0


async def run_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Exit 0 when the replica is equal to the server (after repairing, with --repair)."""
    need_token(args)
    replica = open_replica(args)
    try:
        report = await replica.verify(repair=args.repair)
    except SyncError as exc:
        err.write(f"datagate-replica: verify failed: {exc}\n")
        return 1
    finally:
        await replica.close()
    differences = report.differences
    if args.json:
        out.write(
            _dump(
                {
                    "equal": report.equal,
                    "differences": [d.to_json() for d in differences],
                    "repaired": report.repaired,
                    "rounds": report.range_rounds,
                }
            )
            + "\n"
        )
    else:
        for difference in differences[:1000]:
            out.write(f"{difference.kind:8} {difference.doc_id}\n")
        if len(differences) > 1000:
            out.write(f"… and {len(differences) - 1000} more\n")
        if not differences:
            out.write(
                f"equal: the replica holds what the server holds ({report.range_rounds} round(s))\n"
            )
        elif args.repair:
            state = "now equal" if report.equal else "NOT equal yet: run it again"
            out.write(f"repaired {report.repaired} difference(s); {state}\n")
        else:
            out.write(f"{len(differences)} difference(s); --repair repairs them\n")
    return 0 if report.equal else 1


async def run_watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    need_token(args)
    stop = asyncio.Event()
    gave_up: list[str] = []
    connected: list[bool] = []

    def retrying(error: SyncError, delay: float) -> None:
        """Each failed attempt and the next one on stderr; with --once, the first ends it."""
        if args.once and not connected:
            gave_up.append(str(error))
            stop.set()
            return
        err.write(f"datagate-replica: {error}; retrying in {delay:.1f} s\n")
        err.flush()

    replica = open_replica(args, on_retry=retrying)

    def show(change: Change) -> None:
        out.write((change_json(change) if args.json else describe(change)) + "\n")
        out.flush()

    replica.on_change(show)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    err.write(f"connecting to {args.tenant}/{args.collection} at {args.url} (Ctrl-C stops)\n")
    err.flush()
    await replica.start()
    task = replica._task
    waiter = asyncio.ensure_future(stop.wait())
    live: asyncio.Future[Any] = asyncio.ensure_future(replica.engine.wait_live(None))
    try:
        while task is not None and not task.done() and not stop.is_set():
            done, _ = await asyncio.wait({task, waiter, live}, return_when=asyncio.FIRST_COMPLETED)
            if live in done:
                connected.append(True)
                err.write(f"live: {args.tenant}/{args.collection} (changes print below)\n")
                err.flush()
                live = loop.create_future()  # reported once; never done again
        if gave_up:
            err.write(f"datagate-replica: watch: {gave_up[0]}\n")
            return 1
        if task is not None and task.done() and task.exception() is not None:
            err.write(f"datagate-replica: watch stopped: {task.exception()}\n")
            return 1
        return 0
    finally:
        waiter.cancel()
        live.cancel()
        await replica.close()


def run_local(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    replica = open_replica(args)
    try:
        if args.command == "put":
            fields = parse_fields(args.fields, sys.stdin)
            doc = replica.update(args.id, fields) if args.merge else replica.put(args.id, fields)
            out.write(_dump(doc) + "\n")
            return 0
        if args.command == "get":
            found = replica.get(args.id)
            if found is None:
                err.write(f"datagate-replica: no document {args.id!r}\n")
                return 1
            out.write(_dump(found) + "\n")
            return 0
        if args.command == "rm":
            missing = [doc_id for doc_id in args.ids if not replica.delete(doc_id)]
            for doc_id in missing:
                err.write(f"datagate-replica: no document {doc_id!r}\n")
            return 1 if missing else 0
        if args.command == "ls":
            for doc in replica.list(parse_fields(args.where), limit=args.limit):
                out.write(_dump(doc) + "\n")
            return 0
        if args.command == "status":
            status = replica.status()
            if args.json:
                out.write(_dump(status) + "\n")
                return 0
            markers = status["markers"]
            out.write(
                f"replica     {status['replica']}\n"
                f"collection  {status['binding']}\n"
                f"file        {status['file']}\n"
                f"markers     collectionMarker={markers['collectionMarker']} "
                f"tombstoneMarker={markers['tombstoneMarker']}\n"
                f"documents   {status['documents']} ({status['tombstones']} tombstones)\n"
                f"journal     {status['journal']} change(s) not yet acknowledged\n"
                f"rejected    {len(status['rejected'])}\n"
            )
            for rejected in status["rejected"]:
                out.write(f"  {rejected['id']}: {rejected['error']}\n")
            if "last_sync" in status:
                out.write(f"last sync   {_iso(int(status['last_sync']))}\n")
            if "last_error" in status:
                out.write(f"last error  {status['last_error']}\n")
            return 0
    finally:
        asyncio.run(replica.close())
    raise UsageError(f"unknown command {args.command!r}")


def _iso(millis: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(millis / 1000))


# Options that take a value: `--token -abc` is the token "-abc", not an option.
VALUE_OPTIONS = ("--url", "--tenant", "--collection", "--token", "--file", "--device")
# Commands whose positional list may continue after an option (`put k --merge x=1`).
LIST_ARGUMENTS = {"put": "fields", "ls": "where", "rm": "ids"}


def glue_option_values(argv: Sequence[str]) -> list[str]:
    """`--token -abc` -> `--token=-abc`, so that argparse does not read -abc as an option."""
    glued: list[str] = []
    index = 0
    while index < len(argv):
        item = argv[index]
        if item == "--":
            glued.extend(argv[index:])
            break
        if item in VALUE_OPTIONS and index + 1 < len(argv) and argv[index + 1].startswith("-"):
            glued.append(f"{item}={argv[index + 1]}")
            index += 2
            continue
        glued.append(item)
        index += 1
    return glued


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = glue_option_values(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        target = LIST_ARGUMENTS.get(args.command)
        unknown = [item for item in extras if item.startswith("-") and item != "-"]
        if target is None or unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown or extras)}")
        setattr(args, target, [*getattr(args, target), *extras])
    out, err = sys.stdout, sys.stderr
    url = getattr(args, "url", None) or os.environ.get("DATAGATE_URL")
    if url:
        try:
            check_url(url)
        except ValueError as exc:
            err.write(f"datagate-replica: error: --url {exc}\n")
            return 2
    if args.command in TOPIC_COMMANDS:
        return run_topic_command(args, out, err)
    try:
        if args.command == "sync":
            return asyncio.run(run_sync(args, out, err))
        if args.command == "watch":
            return asyncio.run(run_watch(args, out, err))
        if args.command == "verify":
            return asyncio.run(run_verify(args, out, err))
        return run_local(args, out, err)
    except UsageError as exc:
        err.write(f"datagate-replica: error: {exc}\n")
        return 2
    except StoreError as exc:
        err.write(f"datagate-replica: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
