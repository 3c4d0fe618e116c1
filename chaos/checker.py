"""The checker: reads a whole chaos history (chaos/history.py) and finds what went wrong.

Jepsen-style: the clients only record what they attempted and what the server acknowledged;
the checker decides afterwards, from the whole history and the server's final state, whether
the promises of docs/guarantees.md held. It is pure (no I/O, no Django), so its rules are
tested on hand-made histories (tests/chaos/test_chaos_checker.py).

The rules, each a kind of `Violation`:

- `lost`: an acknowledged write (a receipt's `added`, HTTP 2xx, a live feed.ack) whose id ends
  on the server with a version key lower than the write's, or with the same key and another
  value, or not at all. A higher key is a superseding version under the conflict rule
  (docs/protocol.md section 5): the write lost a conflict, it was not lost.
- `resurrected`: an acknowledged delete whose id ends as a live document with a lower key.
- `phantom`: a final document value that no client ever attempted for that id.
- `gap` / `duplicate`: a live feed that starts after / before the position the client held
  (docs/protocol.md section 5: in order, no gap).
- `not_converged`: a client whose state did not equal the server's within the bound after
  the faults healed.
- `offset_backwards`: a consumer's committed offset that moved backwards (a commit.ack lower
  than an earlier one, or a subscribe that reports less than was committed).
- `skipped_commit`: a subscription from `committed` whose first message is not the one after
  the commit, or a subscription whose messages skip an offset.
- `past_window`: a message delivered further past the consumer's last commit than the commit
  rule allows (two batches).
- `publish_lost`: an acknowledged publish whose offset does not hold its message at the end,
  or one message id acknowledged at two offsets.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chaos.history import Event

WRITE = 0
DELETE = 1

Key = tuple[int, int, int, str]


def as_key(raw: Iterable[Any]) -> Key:
    modified, kind, revision, origin = raw
    if kind == DELETE:
        return (int(modified), DELETE, 0, "")
    return (int(modified), WRITE, int(revision), str(origin))


@dataclass(frozen=True)
class Violation:
    rule: str
    subject: str  # the document id, client, consumer or topic it is about
    detail: str


@dataclass
class Report:
    ops: int = 0
    acked: int = 0
    acked_deletes: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    feeds: int = 0
    published: int = 0
    delivered: int = 0
    convergence: list[float] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    seed: int | None = None
    server_tracebacks: int | None = None  # logged by the daphnes: for reading, not a failure

    def count(self, rule: str) -> int:
        return sum(1 for v in self.violations if v.rule == rule)

    @property
    def ok(self) -> bool:
        return not self.violations

    def percentile(self, share: float) -> float | None:
        if not self.convergence:
            return None
        if len(self.convergence) == 1:
            return self.convergence[0]
        cuts = statistics.quantiles(self.convergence, n=100, method="inclusive")
        return cuts[min(98, max(0, round(share * 100) - 1))]

    def summary(self) -> dict[str, Any]:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        return {
            "seed": self.seed,
            "ops": self.ops,
            "faults": dict(sorted(self.faults.items())),
            "acknowledged writes": self.acked,
            "acknowledged deletes": self.acked_deletes,
            "lost": self.count("lost"),
            "resurrected": self.count("resurrected"),
            "phantom": self.count("phantom"),
            "feeds": self.feeds,
            "gaps": self.count("gap"),
            "duplicates": self.count("duplicate"),
            "not converged": self.count("not_converged"),
            "convergence p50 s": None if p50 is None else round(p50, 2),
            "convergence p99 s": None if p99 is None else round(p99, 2),
            "published": self.published,
            "delivered": self.delivered,
            "publish lost": self.count("publish_lost"),
            "offset backwards": self.count("offset_backwards"),
            "skipped commit": self.count("skipped_commit"),
            "past window": self.count("past_window"),
            "server tracebacks logged": self.server_tracebacks,
        }


def check(events: list[Event]) -> Report:
    """Read the whole history; every broken promise becomes a Violation in the report."""
    report = Report()
    for event in events:
        kind = event["kind"]
        if kind == "run":
            report.seed = event.get("seed")
        elif kind == "op":
            report.ops += 1
        elif kind == "fault" and event.get("phase") == "start":
            report.faults[event["fault"]] += 1
        elif kind == "server_logs":
            report.server_tracebacks = int(event["tracebacks"])
    _check_documents(events, report)
    _check_feeds(events, report)
    _check_convergence(events, report)
    _check_topics(events, report)
    return report


# --- documents --------------------------------------------------------------------------------


def _check_documents(events: list[Event], report: Report) -> None:
    finals = [e for e in events if e["kind"] == "final_state"]
    acks = [e for e in events if e["kind"] == "ack"]
    report.acked = sum(1 for a in acks if as_key(a["key"])[1] == WRITE)
    report.acked_deletes = len(acks) - report.acked
    if not finals:
        if acks:
            report.violations.append(
                Violation("lost", "*", "the history has no final server state to check against")
            )
        return
    final = finals[-1]
    documents: dict[str, dict[str, Any]] = final["documents"]
    tombstones: dict[str, int] = final["tombstones"]

    def final_key(doc_id: str) -> Key | None:
        if doc_id in documents:
            return as_key(documents[doc_id]["key"])
        if doc_id in tombstones:
            return (int(tombstones[doc_id]), DELETE, 0, "")
        return None

    for ack in acks:
        doc_id = ack["doc"]
        key = as_key(ack["key"])
        held = final_key(doc_id)
        what = "delete" if key[1] == DELETE else "write"
        where = f"{what} {list(key)} by {ack['client']} ({ack.get('via', '?')})"
        if held is None:
            report.violations.append(Violation("lost", doc_id, f"{where}: the id is gone"))
        elif held < key:
            if key[1] == DELETE and held[1] == WRITE:
                report.violations.append(
                    Violation("resurrected", doc_id, f"{where}: came back as {list(held)}")
                )
            else:
                report.violations.append(
                    Violation("lost", doc_id, f"{where}: the server ends at {list(held)}")
                )
        elif held == key and key[1] == WRITE and not ack.get("bound"):
            value = documents[doc_id].get("value")
            if value != ack.get("value"):
                report.violations.append(
                    Violation(
                        "lost",
                        doc_id,
                        f"{where}: same version, value {value!r} not {ack['value']!r}",
                    )
                )

    # Every value a client writes is unique, so a value nobody attempted for that id is a
    # phantom. (An HTTP PUT's key is the server's to choose, and its answer may be lost.)
    attempted = {
        (e["doc"], _hashable(e.get("value")))
        for e in events
        if e["kind"] in ("op", "ack") and e.get("value") is not None
    }
    for doc_id, held_doc in documents.items():
        if (doc_id, _hashable(held_doc.get("value"))) not in attempted:
            report.violations.append(
                Violation("phantom", doc_id, f"{held_doc['key']} = {held_doc.get('value')!r}")
            )


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


# --- feeds and convergence --------------------------------------------------------------------


def _check_feeds(events: list[Event], report: Report) -> None:
    for event in events:
        if event["kind"] != "feed":
            continue
        report.feeds += 1
        held, start, end = int(event["held"]), int(event["start"]), int(event["end"])
        span = f"feed {start}..{end} while holding {held}"
        if start > held:
            report.violations.append(Violation("gap", event["client"], span))
        elif start < held or end < start:
            report.violations.append(Violation("duplicate", event["client"], span))


def _check_convergence(events: list[Event], report: Report) -> None:
    bound = next(
        (float(e["convergence_bound"]) for e in events if e["kind"] == "run"), float("inf")
    )
    for event in events:
        if event["kind"] != "converged":
            continue
        seconds = event.get("seconds")
        if seconds is None or float(seconds) > bound:
            report.violations.append(
                Violation(
                    "not_converged",
                    str(event["client"]),
                    f"epoch {event.get('epoch')}: not equal to the server within {bound} s"
                    + (f" ({event.get('detail')})" if event.get("detail") else ""),
                )
            )
        else:
            report.convergence.append(float(seconds))


# --- topics -----------------------------------------------------------------------------------


def _check_topics(events: list[Event], report: Report) -> None:
    published: dict[str, dict[str, int]] = defaultdict(dict)  # topic -> message id -> offset
    finals: dict[str, dict[int, str]] = {}
    committed: dict[tuple[str, str], int] = {}  # (consumer, topic) -> highest commit.ack
    window: dict[tuple[str, str], int] = {}  # batch size of the open subscription
    expected_next: dict[tuple[str, str], int | None] = {}
    for event in events:
        kind = event["kind"]
        if kind == "publish":
            report.published += 1
            topic, message_id, offset = event["topic"], event["message_id"], int(event["offset"])
            first = published[topic].setdefault(message_id, offset)
            if first != offset:
                report.violations.append(
                    Violation(
                        "publish_lost", topic, f"message {message_id} acked at {first} and {offset}"
                    )
                )
        elif kind == "final_topic":
            finals[event["topic"]] = {int(k): v for k, v in event["messages"].items()}
        elif kind == "subscribed":
            pair = (event["consumer"], event["topic"])
            held = committed.get(pair, 0)
            reported = int(event["committed"])
            if reported < held:
                report.violations.append(
                    Violation(
                        "offset_backwards",
                        pair[0],
                        f"{pair[1]}: subscribe reports committed {reported} after {held} was acked",
                    )
                )
            committed[pair] = max(held, reported)
            window[pair] = int(event["batch_size"])
            next_offset = int(event["next_offset"])
            if event.get("from", "committed") == "committed" and next_offset != reported + 1:
                report.violations.append(
                    Violation(
                        "skipped_commit",
                        pair[0],
                        f"{pair[1]}: subscribed from committed {reported}, next is {next_offset}",
                    )
                )
            expected_next[pair] = next_offset
        elif kind == "commit":
            pair = (event["consumer"], event["topic"])
            offset = int(event["offset"])
            if offset < committed.get(pair, 0):
                report.violations.append(
                    Violation(
                        "offset_backwards",
                        pair[0],
                        f"{pair[1]}: commit.ack {offset} after {committed[pair]}",
                    )
                )
            committed[pair] = max(committed.get(pair, 0), offset)
        elif kind == "deliver":
            report.delivered += 1
            pair = (event["consumer"], event["topic"])
            offset = int(event["offset"])
            expected = expected_next.get(pair)
            if expected is not None and offset != expected:
                report.violations.append(
                    Violation(
                        "skipped_commit",
                        pair[0],
                        f"{pair[1]}: delivered offset {offset}, expected {expected}",
                    )
                )
            expected_next[pair] = offset + 1
            commit_sent = int(event.get("commit_sent", committed.get(pair, 0)))
            limit = max(commit_sent, committed.get(pair, 0)) + 2 * window.get(pair, 1)
            if offset > limit:
                report.violations.append(
                    Violation(
                        "past_window",
                        pair[0],
                        f"{pair[1]}: delivered {offset} with {commit_sent} committed "
                        f"(batch {window.get(pair)})",
                    )
                )
    for topic, ids in published.items():
        final = finals.get(topic)
        if final is None:
            report.violations.append(
                Violation("publish_lost", topic, "no final read of the topic to check against")
            )
            continue
        for message_id, offset in ids.items():
            if final.get(offset) != message_id:
                report.violations.append(
                    Violation(
                        "publish_lost",
                        topic,
                        f"message {message_id} acked at {offset}, "
                        f"the topic holds {final.get(offset)!r} there",
                    )
                )


# --- the shortest history that shows a failure ------------------------------------------------


def witness(events: list[Event], violation: Violation, limit: int = 40) -> list[Event]:
    """The events that concern the violation's subject: what to read to see it happen."""
    subject = violation.subject
    picked = []
    for event in events:
        kind = event["kind"]
        if kind in ("run", "final_state", "final_topic"):
            continue
        if subject in (
            event.get("doc"),
            event.get("client"),
            event.get("consumer"),
            event.get("topic"),
        ):
            picked.append(event)
    if violation.rule in ("lost", "resurrected", "phantom"):
        final = next((e for e in reversed(events) if e["kind"] == "final_state"), None)
        if final is not None:
            picked.append(
                {
                    "kind": "final_state",
                    "document": final["documents"].get(subject),
                    "tombstone": final["tombstones"].get(subject),
                }
            )
    # Faults matter to every rule: keep those inside the subject's time span.
    if picked:
        first, last = picked[0].get("t", 0), picked[-1].get("t", 1e18)
        faults = [e for e in events if e["kind"] == "fault" and first <= e["t"] <= last]
        picked = sorted(picked + faults, key=lambda e: e.get("t", 1e18))
    return picked[-limit:]


def render(report: Report, events: list[Event], *, witnesses: int = 5) -> str:
    """A readable verdict: the counts, then each violation with its shortest history."""
    lines = [("PASS" if report.ok else "FAIL") + f" (seed {report.seed})"]
    for name, value in report.summary().items():
        lines.append(f"  {name}: {value}")
    for violation in report.violations[:witnesses]:
        lines.append(f"\n{violation.rule} {violation.subject}: {violation.detail}")
        lines.extend(f"    {event}" for event in witness(events, violation))
    if len(report.violations) > witnesses:
        lines.append(f"\n... and {len(report.violations) - witnesses} more violations")
    if not report.ok:
        lines.append(f"\nreproduce with: make chaos SEED={report.seed}")
    return "\n".join(lines)
