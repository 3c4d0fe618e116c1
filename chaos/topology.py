"""What a chaos run starts and stops: its own PostgreSQL database, redis-server and daphnes.

Everything is on loopback and belongs to the run: the database is created fresh on the
PostgreSQL server of `TEST_DATABASE_URL` (and dropped at the end), redis-server is started on a
free port with no persistence (a SIGKILL loses all it held, as a restarted cache does), and the
two daphne processes serve the project's ASGI application on that database and Redis. Faults
only ever touch these: the run's own processes, and the backends of its own database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
DAPHNE = Path(sys.executable).with_name("daphne")
REDIS_SERVER = os.environ.get("DATAGATE_REDIS_SERVER", shutil.which("redis-server") or "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 60 s")


@dataclass
class Process:
    """A child process the run can SIGKILL and start again on the same port."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own binaries, fixed arguments
            self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port, self.process, self.name, self.log_path)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Topology:
    """The run's PostgreSQL database, redis-server and two daphne processes."""

    def __init__(self, *, workdir: Path, postgres_url: str, daphnes: int = 2) -> None:
        self.workdir = workdir
        base = urlparse(postgres_url)
        self.database = f"dg_chaos_{uuid.uuid4().hex[:10]}"
        self.admin_url = urlunparse(base._replace(path="/postgres"))
        self.database_url = urlunparse(base._replace(path=f"/{self.database}"))
        self.redis = Process(
            name="redis",
            argv=[
                REDIS_SERVER,
                "--port",
                "0",  # set in start()
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            port=0,
            env=dict(os.environ),
            log_path=workdir / "redis.log",
        )
        self.daphne_count = daphnes
        self.daphnes: list[Process] = []
        self.token = ""
        self._created = False

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def server_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "DATAGATE_SQLITE_PATH"}
        }
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "DATAGATE_REDIS_PREFIX": f"dg-chaos-{uuid.uuid4().hex[:8]}",
                "DATAGATE_DATA_DIR": str(self.workdir / "data"),
                "DJANGO_SECRET_KEY": "chaos-run-secret-key-not-for-production-use-0123456789",
                "DATAGATE_API_RATE_LIMIT": "100000/min",
                "DATAGATE_ACCESS_TOKEN_TTL": "86400",
            }
        )
        return env

    def manage(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603 - our own manage.py
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.server_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def start(self) -> None:
        import psycopg

        if not REDIS_SERVER:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self._created = True
        self.redis.port = free_port()
        self.redis.argv[2] = str(self.redis.port)
        self.redis.start()
        self.manage("migrate", "--no-input")
        self.manage("datagate_bootstrap")
        self.token = self.manage("datagate_token", "admin", "--scope", "read write topics").strip()
        for n in range(self.daphne_count):
            port = free_port()
            name = "ab"[n] if n < 2 else f"d{n}"
            daphne = Process(
                name=f"daphne-{name}",
                argv=[
                    str(DAPHNE),
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "datagate_site.asgi:application",
                ],
                port=port,
                env=self.server_env(),
                log_path=self.workdir / f"daphne-{name}.log",
            )
            daphne.start()
            self.daphnes.append(daphne)

    def stop(self) -> None:
        for daphne in self.daphnes:
            with contextlib.suppress(Exception):
                daphne.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()
        if self._created:
            import psycopg

            with (
                contextlib.suppress(Exception),
                psycopg.connect(self.admin_url, autocommit=True) as conn,
            ):
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def terminate_backends(self) -> int:
        """Terminate every PostgreSQL backend of the run's own database; how many."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchall()
        return len(rows)

    def logs_with(self, needle: str) -> list[str]:
        found = []
        for daphne in self.daphnes:
            if daphne.log_path.exists():
                text = daphne.log_path.read_text(errors="replace")
                found += [f"{daphne.name}: {line}" for line in text.splitlines() if needle in line]
        return found


def describe(topology: Topology) -> dict[str, Any]:
    return {
        "database": topology.database,
        "redis": topology.redis_url,
        "daphnes": [d.port for d in topology.daphnes],
    }
