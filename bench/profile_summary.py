"""Where a sampled server spends its time: `python -m bench.profile_summary FILE [--markdown]`.

FILE is a py-spy `--format raw` profile (`make bench ... --profile` writes them to
bench/results/profiles/): one line per distinct stack, `frame;frame;...;frame COUNT`. This
sums the samples of each step of the connect path (PROTOCOL.md section 4: token check,
access, replica upsert, the empty pull) inclusive of what they call, and the busiest leaf
functions by where they live (ORM, SQLite, websocket framing, ...). Idle samples (the event
loop waiting, worker threads waiting for work) are counted apart, so shares are of busy time.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

# Steps of the connect path, matched against the function names in a stack (inclusive).
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("session_open (all of the Connect's checks)", ("session_open ",)),
    ("token check", ("token_authenticate ",)),
    (
        "access compilation (collection read/write/create, document policy)",
        (
            "access_collection_read ",
            "access_collection_write ",
            "access_collection_create ",
            "document_policy ",
        ),
    ),
    ("replica upsert", ("replica_connected ",)),
    ("access baseline and watch (re-checks)", ("access_baseline ", "access_recheck ")),
    ("the pull (collection head, change pages)", ("collection_head ", "change_page ")),
    ("replica_acked (the pull's ack)", ("replica_acked ",)),
    ("hub attach/join", ("attach_replica ", "LiveHub.join ")),
    ("message parse (pydantic)", ("parse_message ",)),
    ("Channels' close_old_connections (thread hop)", ("close_old_connections ",)),
)

# The innermost frame's file says which layer the time goes to.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLite / psycopg driver", ("sqlite3/", "psycopg/", "psycopg_pool/")),
    ("Django ORM and SQL compiler", ("django/db/",)),
    ("django-guardian", ("guardian/",)),
    ("autobahn (websocket framing, handshake)", ("autobahn/",)),
    ("Twisted", ("twisted/",)),
    ("daphne", ("daphne/",)),
    ("asyncio and asgiref (scheduling, thread hops)", ("asyncio/", "asgiref/", "concurrent/")),
    ("JSON", ("json/", "orjson")),
    ("pydantic", ("pydantic",)),
    ("DataGate", ("replication/", "accounts/", "core/", "topics/", "datagate_site/")),
)

IDLE = ("select (", "poll (", "epoll", "_worker (concurrent/futures/thread.py", "wait (threading")


def read_stacks(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def _idle(stack: str) -> bool:
    leaf = stack.rsplit(";", 1)[-1]
    return any(mark in leaf for mark in IDLE)


def summarize(stacks: Counter[str]) -> dict[str, object]:
    total = sum(stacks.values())
    busy = {s: n for s, n in stacks.items() if not _idle(s)}
    busy_total = sum(busy.values()) or 1
    steps = {
        label: round(
            100 * sum(n for s, n in busy.items() if any(m in s for m in marks)) / busy_total, 1
        )
        for label, marks in STEPS
    }
    layers: Counter[str] = Counter()
    for stack, count in busy.items():
        leaf = stack.rsplit(";", 1)[-1]
        layer = next((name for name, marks in LAYERS if any(m in leaf for m in marks)), "other")
        layers[layer] += count
    leaves: Counter[str] = Counter()
    for stack, count in busy.items():
        leaves[stack.rsplit(";", 1)[-1]] += count
    return {
        "samples": total,
        "busy_samples": sum(busy.values()),
        "steps_percent_of_busy": steps,
        "layers_percent_of_busy": {
            k: round(100 * v / busy_total, 1) for k, v in layers.most_common()
        },
        "top_leaves_percent_of_busy": {
            k: round(100 * v / busy_total, 1) for k, v in leaves.most_common(10)
        },
    }


def markdown(summary: dict[str, object], title: str) -> str:
    lines = [
        f"**{title}**: {summary['samples']} samples, {summary['busy_samples']} busy.",
        "",
        "| step of the connect path (inclusive) | % of busy samples |",
        "|---|---|",
    ]
    steps = summary["steps_percent_of_busy"]
    assert isinstance(steps, dict)
    lines += [f"| {label} | {share} |" for label, share in steps.items()]
    lines += ["", "| where the innermost frame lives | % of busy samples |", "|---|---|"]
    layers = summary["layers_percent_of_busy"]
    assert isinstance(layers, dict)
    lines += [f"| {label} | {share} |" for label, share in layers.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_summary")
    parser.add_argument("file", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    summary = summarize(read_stacks(args.file))
    if args.markdown:
        print(markdown(summary, args.file.name))
    else:
        import json

        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
