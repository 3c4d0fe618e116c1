"""The `default` database from the environment: SQLite (WAL) by default, or `DATABASE_URL`.

A SQLite database gets the same connection settings whether it is the embedded default or
named by `DATABASE_URL=sqlite:///...`: WAL (readers beside the one writer), IMMEDIATE
transactions (two writers queue on the busy timeout instead of deadlocking when a reader
upgrades to a writer), a 20 s busy timeout, and connections kept per thread. Without them an
HTTP write during a replica's connect answered 500 "database is locked".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dj_database_url

SQLITE_ENGINE = "django.db.backends.sqlite3"

SQLITE_OPTIONS: dict[str, Any] = {
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN so
    # two writers queue on busy_timeout instead of deadlocking on upgrade.
    "init_command": (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
        "PRAGMA foreign_keys=ON; PRAGMA cache_size=-20000;"
    ),
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def sqlite_settings(database: dict[str, Any]) -> dict[str, Any]:
    """`database` (a SQLite one) with the project's connection settings; explicit OPTIONS of
    its own (none from a URL) are kept over ours."""
    return {
        **database,
        "ENGINE": SQLITE_ENGINE,
        "OPTIONS": {**SQLITE_OPTIONS, **database.get("OPTIONS", {})},
        # Keep each thread's connection: replication sessions run every ORM call in
        # database_sync_to_async, which otherwise reconnects (and re-runs the PRAGMAs) per
        # call; measured, ConnectAck went from 132 ms to 38 ms (median, loaded machine); it
        # was 28% of a live server's CPU in bench/ profiles (bench/RESULTS.md).
        "CONN_MAX_AGE": None,
    }


def default_database(environ: Mapping[str, str], data_dir: Path) -> dict[str, Any]:
    url = environ.get("DATABASE_URL")
    if url:
        database: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60))
        if database.get("ENGINE") == SQLITE_ENGINE:
            return sqlite_settings(database)
        return database
    data_dir.mkdir(parents=True, exist_ok=True)
    return sqlite_settings(
        {
            "NAME": environ.get("DATAGATE_SQLITE_PATH", str(data_dir / "datagate.sqlite3")),
            # A file, not shared-cache memory: tests with threads need SQLite's real locking.
            "TEST": {
                "NAME": environ.get("DATAGATE_SQLITE_TEST_PATH", str(data_dir / "test.sqlite3"))
            },
        }
    )
