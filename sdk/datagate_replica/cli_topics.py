"""The `publish` and `subscribe` commands of `datagate-replica` (DataGate topics).

    datagate-replica publish --create global news '{"title": "hello"}' '"plain text"'
    echo '{"n": 1}' | datagate-replica publish news -
    datagate-replica subscribe news --from beginning --count 10

`add_topic_commands(subparsers)` adds them to the command line's subparsers;
`run_topic_command(args, out, err)` runs one. The server URL, tenant and token come from
`--url`/`--tenant`/`--token` or `DATAGATE_URL`/`DATAGATE_TENANT`/`DATAGATE_TOKEN`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from datagate_replica.topics import TopicError, TopicsClient

TOPIC_COMMANDS = ("publish", "subscribe")
TOPIC_EXISTS = "DG-6003"


def _connection_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the command (on the main parser) is kept.
    group = parser.add_argument_group("connection")
    group.add_argument("--url", default=argparse.SUPPRESS, help="server URL ($DATAGATE_URL)")
    group.add_argument("--tenant", default=argparse.SUPPRESS, help="tenant ($DATAGATE_TENANT)")
    group.add_argument("--token", default=argparse.SUPPRESS, help="token ($DATAGATE_TOKEN)")
    group.add_argument(
        "--device",
        default=argparse.SUPPRESS,
        help="device name; offsets are kept per device ($DATAGATE_DEVICE, default: host name)",
    )


def add_topic_commands(subparsers: Any) -> None:
    """Add `publish` and `subscribe` to an argparse subparsers object."""
    publish = subparsers.add_parser(
        "publish",
        help="publish messages to a topic (JSON values; - reads JSON lines from stdin)",
        description="Publish messages to a topic, atomically; prints their offsets.",
    )
    _connection_options(publish)
    publish.add_argument("topic")
    publish.add_argument("messages", nargs="*", help="JSON values; none or - reads stdin")
    publish.add_argument(
        "--create",
        choices=("global", "local"),
        default=None,
        help="create the topic first with this scope if it does not exist",
    )
    publish.add_argument(
        "--id",
        action="append",
        dest="message_ids",
        default=None,
        help="message id (repeat once per message); a retry with the same ids is not stored twice",
    )

    subscribe = subparsers.add_parser(
        "subscribe",
        help="print a topic's messages as JSON lines, committing each batch once printed",
        description="Print a topic's messages as JSON lines and commit them once printed.",
    )
    _connection_options(subscribe)
    subscribe.add_argument("topic")
    subscribe.add_argument(
        "--from",
        dest="start",
        default="committed",
        help="committed (default), beginning, latest, or START[:END] offsets",
    )
    subscribe.add_argument("--batch-size", type=int, default=None)
    subscribe.add_argument("--count", type=int, default=None, help="stop after this many")
    subscribe.add_argument(
        "--no-commit", action="store_true", help="do not commit (read without moving the offset)"
    )


class TopicUsageError(Exception):
    pass


def _setting(args: argparse.Namespace, name: str, env: str, fallback: str | None = None) -> str:
    value = getattr(args, name, None) or os.environ.get(env) or fallback
    if not value:
        raise TopicUsageError(f"--{name} (or {env}) is required")
    return str(value)


def _client(args: argparse.Namespace) -> TopicsClient:
    return TopicsClient(
        _setting(args, "url", "DATAGATE_URL", "ws://127.0.0.1:8000"),
        tenant=_setting(args, "tenant", "DATAGATE_TENANT"),
        token=_setting(args, "token", "DATAGATE_TOKEN"),
        device=_setting(args, "device", "DATAGATE_DEVICE", socket.gethostname()),
    )


def parse_start(text: str) -> str | tuple[int, int | None]:
    if text in ("committed", "beginning", "latest"):
        return text
    first, _, last = text.partition(":")
    try:
        return int(first), (int(last) if last else None)
    except ValueError as exc:
        raise TopicUsageError(
            f"--from {text!r}: use committed, beginning, latest or START[:END]"
        ) from exc


def _payloads(items: list[str], stdin: Iterable[str]) -> list[Any]:
    if not items or items == ["-"]:
        items = [line for line in stdin if line.strip()]
    payloads = []
    for item in items:
        try:
            payloads.append(json.loads(item))
        except ValueError as exc:
            raise TopicUsageError(f"not JSON: {item.strip()[:60]!r} ({exc})") from exc
    return payloads


async def _publish(args: argparse.Namespace, out: TextIO) -> int:
    payloads = _payloads(args.messages, sys.stdin)
    if args.message_ids is not None and len(args.message_ids) != len(payloads):
        raise TopicUsageError("give one --id per message")
    async with _client(args) as client:
        if args.create is not None:
            try:
                await client.create(args.topic, scope=args.create)
            except TopicError as exc:
                if exc.code != TOPIC_EXISTS:
                    raise
        offsets = await client.publish(args.topic, payloads, message_ids=args.message_ids)
    for offset in offsets:
        out.write(f"{offset}\n")
    return 0


async def _subscribe(args: argparse.Namespace, out: TextIO) -> int:
    start = parse_start(args.start)
    seen = 0
    async with (
        _client(args) as client,
        client.subscribe(
            args.topic,
            start=start,
            batch_size=args.batch_size,
            auto_commit=not args.no_commit,
        ) as subscription,
    ):
        if args.count == 0:
            return 0
        async for message in subscription:
            line = {
                "offset": message.offset,
                "messageId": message.message_id,
                "payload": message.payload,
                "publisher": message.publisher,
                "publishedAt": message.published_at,
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                if not args.no_commit:
                    await subscription.commit(message.offset)
                break
    return 0


def run_topic_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run `publish` or `subscribe`: 0 done, 1 refused or unreachable, 2 bad usage."""
    runner = _publish if args.command == "publish" else _subscribe
    try:
        return asyncio.run(runner(args, out))
    except TopicUsageError as exc:
        err.write(f"datagate-replica: error: {exc}\n")
        return 2
    except TopicError as exc:
        err.write(f"datagate-replica: {exc.text}\n")
        return 1
    except (OSError, ConnectionError, TimeoutError) as exc:
        err.write(f"datagate-replica: cannot reach the server: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
