"""A SQLite `DATABASE_URL` gets the embedded default's connection settings (issue 14, item 10):
WAL, IMMEDIATE transactions, a busy timeout, per-thread connections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from datagate_site.database import SQLITE_OPTIONS, default_database

ROOT = Path(__file__).resolve().parents[2]


def test_a_sqlite_url_gets_the_same_connection_settings_as_the_default(tmp_path: Path) -> None:
    embedded = default_database({}, tmp_path / "var")
    named = default_database({"DATABASE_URL": f"sqlite:///{tmp_path}/other.sqlite3"}, tmp_path)
    assert named["NAME"] == f"{tmp_path}/other.sqlite3"
    for database in (embedded, named):
        assert database["ENGINE"] == "django.db.backends.sqlite3"
        assert database["OPTIONS"] == SQLITE_OPTIONS
        assert database["CONN_MAX_AGE"] is None
    assert "journal_mode=WAL" in SQLITE_OPTIONS["init_command"]
    assert SQLITE_OPTIONS["transaction_mode"] == "IMMEDIATE"
    assert SQLITE_OPTIONS["timeout"] >= 20


def test_a_postgresql_url_is_left_as_it_is(tmp_path: Path) -> None:
    database = default_database({"DATABASE_URL": "postgres://u@db:5432/datagate"}, tmp_path)
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert "OPTIONS" not in database or "transaction_mode" not in database["OPTIONS"]
    assert database["CONN_MAX_AGE"] == 60


def test_a_server_on_a_sqlite_url_runs_in_wal_with_immediate_transactions(tmp_path: Path) -> None:
    """The settings module itself, in a fresh process, as `make run` or daphne would load it."""
    script = (
        "import django, json; django.setup();"
        "from django.db import connection;"
        "cursor = connection.cursor();"
        "mode = cursor.execute('PRAGMA journal_mode').fetchone()[0];"
        "busy = cursor.execute('PRAGMA busy_timeout').fetchone()[0];"
        "print(json.dumps([mode, busy, connection.transaction_mode]))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "datagate_site.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path}/url.sqlite3",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["wal", 20000, "IMMEDIATE"]
