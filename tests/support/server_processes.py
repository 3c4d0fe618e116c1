"""Real daphne processes for end-to-end tests, sharing the test database with the test.

`DaphneServer.start()` launches `daphne datagate_site.asgi:application` on a free loopback port
with the same database the test uses (the pytest-django test database, so the test can create
users and tokens through the ORM) and waits until it accepts connections. Use it with
`transactional_db`, so what the test writes is committed and visible to the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
DAPHNE = Path(sys.executable).with_name("daphne")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> str:
    """Run `manage.py ARGS` in a subprocess with `env`; return its output, failing on error."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def database_env() -> dict[str, str]:
    """Environment variables that point a server process at this test's database."""
    settings = connection.settings_dict
    if settings["ENGINE"].endswith("sqlite3"):
        return {"DATAGATE_SQLITE_PATH": str(settings["NAME"])}
    user = settings.get("USER") or "postgres"
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    password = settings.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else f"{user}@"
    return {"DATABASE_URL": f"postgres://{auth}{host}:{port}/{settings['NAME']}"}


@dataclass
class DaphneServer:
    port: int
    env: dict[str, str]
    log_path: Path
    application: str = "datagate_site.asgi:application"
    process: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        *,
        tmp_path: Path,
        extra_env: dict[str, str] | None = None,
        port: int | None = None,
        name: str = "daphne",
        application: str = "datagate_site.asgi:application",
    ) -> DaphneServer:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "DATAGATE_SQLITE_PATH"}
        }
        env.update(database_env())
        env["DATAGATE_DATA_DIR"] = str(tmp_path / f"{name}-data")
        env["DJANGO_SECRET_KEY"] = "e2e-test-secret-key-not-for-production-use-0123456789"
        env.update(extra_env or {})
        server = cls(
            port=port or free_port(),
            env=env,
            log_path=tmp_path / f"{name}.log",
            application=application,
        )
        server.launch()
        return server

    def command(self) -> list[str]:
        """The command line that serves `application` on `port` (other servers override it)."""
        return [str(DAPHNE), "-b", "127.0.0.1", "-p", str(self.port), self.application]

    def launch(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command()[0]} exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.command()[0]} did not start within 30 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a graceful shutdown) or, with kill=True, SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.launch()


class UvicornServer(DaphneServer):
    """The same application under uvicorn (the `servers` extra; bench/servers.py).

    uvloop and httptools, as uvicorn runs in production; the `websockets` protocol with its
    message limit at DATAGATE_MAX_FRAME_BYTES + 1, so a message of any size over the limit
    up to that still reaches the application (DG-2007, then 1009), and a larger one is closed
    with 1009 by the websockets library itself. Channels has no lifespan handler: off.
    """

    def command(self) -> list[str]:
        limit = int(self.env.get("DATAGATE_MAX_FRAME_BYTES", 1024 * 1024))
        return [
            str(Path(sys.executable).with_name("uvicorn")),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets",
            "--ws-max-size",
            str(limit + 1),
            "--log-level",
            "warning",
            self.application,
        ]


class GranianServer(DaphneServer):
    """The same application under granian (Rust HTTP and websockets), one worker, ASGI
    without lifespan (`asginl`: Channels has no lifespan handler)."""

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("granian")),
            "--interface",
            "asginl",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            self.application,
        ]


SERVERS: dict[str, type[DaphneServer]] = {
    "daphne": DaphneServer,
    "uvicorn": UvicornServer,
    "granian": GranianServer,
}
