"""The history of a chaos run: every operation, acknowledgement, feed, fault and final state.

Each event is a plain dict with `kind` and `t` (seconds since the run started); the checker
reads the list whole. `History` keeps the events in memory and, given a path, also appends
them to a JSON-lines file as they happen, so a run that dies still leaves what it saw.

Event kinds (fields besides `kind` and `t`):

| kind | fields | meaning |
|---|---|---|
| `run` | `seed`, `duration`, `convergence_bound`, ... | the run's parameters (first event) |
| `op` | `client`, `doc`, `key` (null: the server's to choose), `value`, `via` | attempted |
| `ack` | `client`, `doc`, `key`, `value`, `via`, `bound`? | the server acknowledged it |
| `feed` | `client`, `held`, `start`, `end` | a live feed arrived while the client held `held` |
| `fault` | `fault`, `phase` (`start`/`heal`), `target` | a fault began or healed |
| `converged` | `client`, `epoch`, `seconds` (null: not in time) | state equal to the server's |
| `publish` | `topic`, `message_id`, `offset` | a topics publish was acknowledged |
| `subscribed` | `consumer`, `topic`, `committed`, `next_offset`, `batch_size`, `from` | its ack |
| `deliver` | `consumer`, `topic`, `offset`, `message_id`, `commit_sent` | a message arrived |
| `commit` | `consumer`, `topic`, `offset` | a commit.ack |
| `final_state` | `documents` {id: {key, value}}, `tombstones` {id: ms} | the server at the end |
| `final_topic` | `topic`, `messages` {offset: message_id} | a topic's messages at the end |

A `key` is the conflict rule's version key `[modified, kind, revision, origin]` (kind 0 a
write, 1 a delete; docs/protocol.md section 5). An `ack` with `bound: true` carries a lower
bound of the real key (an HTTP delete: the server picks the stamp, at or after the request).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class History:
    def __init__(self, path: Path | None = None) -> None:
        self.events: list[Event] = []
        self.started = time.monotonic()
        self._file = path.open("a", encoding="utf-8") if path is not None else None
        self._lock = threading.Lock()

    def record(self, kind: str, **fields: Any) -> Event:
        event = {"kind": kind, "t": round(time.monotonic() - self.started, 3), **fields}
        with self._lock:
            self.events.append(event)
            if self._file is not None:
                self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
        return event

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def load(path: Path) -> list[Event]:
    """The events of a history file (a run that died may leave a torn last line)."""
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return events
