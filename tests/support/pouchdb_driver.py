"""The real PouchDB 9 client (npm, pinned in tests/pouchdb/package-lock.json) as a subprocess.

`make test` runs `npm ci` in tests/pouchdb first (the `pouchdb` target). Without Node or the
installed packages the PouchDB tests skip with the reason, except in CI (`CI=true`), where
they fail, like a missing PostgreSQL (tests/support/external_services.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.support.external_services import unavailable

POUCHDB_DIR = Path(__file__).resolve().parents[1] / "pouchdb"
DRIVER = POUCHDB_DIR / "driver.js"


def require_pouchdb() -> str:
    """The `node` binary, when PouchDB is installed; else fail (CI) or skip."""
    node = shutil.which("node")
    installed = (POUCHDB_DIR / "node_modules" / "pouchdb-core").is_dir()
    if node and installed:
        return node
    message = (
        "Node is not installed"
        if not node
        else "PouchDB is not installed in tests/pouchdb (make pouchdb runs npm ci there)"
    )
    unavailable(message)


class PouchDriver:
    """One Node process holding PouchDB databases; `call(op, **args)` runs one command."""

    def __init__(self, node: str) -> None:
        self.process = subprocess.Popen(
            [node, str(DRIVER)],
            cwd=POUCHDB_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._next = 0
        self._lock = threading.Lock()

    def call(self, op: str, **args: Any) -> Any:
        """Run one command; PouchDB's errors come back as {"error": {name, status, reason}}."""
        with self._lock:
            self._next += 1
            assert self.process.stdin is not None
            assert self.process.stdout is not None
            self.process.stdin.write(json.dumps({"id": self._next, "op": op, **args}) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        if not line:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"the PouchDB driver exited: {stderr[-2000:]}")
        answer = json.loads(line)
        if "error" in answer:
            return {"error": answer["error"]}
        return answer["ok"]

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
