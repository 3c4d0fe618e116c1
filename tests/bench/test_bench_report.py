"""`python -m bench.report`'s summary: each figure of issue 21 beside its same-run limit,
taken from the newest recorded run that measured it."""

from __future__ import annotations

from typing import Any

from bench.report import servers_rows, summary_markdown


def _run(started: str, benchmarks: dict[str, Any], postgres: dict[str, Any] | None = None) -> Any:
    passes: dict[str, Any] = {"sqlite": {"benchmarks": benchmarks}}
    if postgres is not None:
        passes["postgres"] = {"benchmarks": postgres}
    return {
        "started": started,
        "mode": "full",
        "commit": "abc1234",
        "load_start": [1.0, 2.0, 3.0],
        "machine": {"nofile_limit": 20_000},
        "passes": passes,
    }


def test_summary_puts_each_figure_beside_its_limit_from_the_newest_run_that_has_it() -> None:
    newer = _run(
        "2026-12-05T15:00:00+00:00",
        {
            "connections": {
                "datagate": {"connects_per_s": 600, "held": 20_000, "kib_per_connection": 30.0},
                "bare_channels": {"connects_per_s": 300, "kib_per_connection": 20.0},
            }
        },
    )
    older = _run(
        "2026-11-22T04:38:00+00:00",
        {
            "push_ingest": {
                "one_replica": {"docs_per_s": 20_000},
                "baseline_batch_apply": {"docs_per_s": 25_000},
            },
            "connections": {"datagate": {"connects_per_s": 65}, "bare_channels": {}},
        },
    )
    table = summary_markdown([newer, older])
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    push = lines["push ingest, 1 replica, SQLite"]
    assert "20,000 docs/s" in push
    assert "25,000 docs/s" in push
    assert "0.80x" in push
    assert "**no**" in push
    assert "2026-11-22 04:38" in push
    connects = lines["connects per second (connect, pull, live)"]
    assert "600/s" in connects
    assert "2.00x" in connects
    assert "| yes |" in connects
    assert "2026-12-05 15:00" in connects
    idle = lines["idle live replicas in one process"]
    assert "20,000 at 30 KiB" in idle
    assert "1.50x" in idle
    assert "| yes |" in idle
    assert "not measured" in lines["push ingest, PostgreSQL + Redis"]


def test_servers_rows_give_each_server_beside_daphne() -> None:
    fan = {
        "latency": {"count": 10, "p50_ms": 5.0, "p99_ms": 9.0, "max_ms": 10.0},
        "expected_deliveries": 10,
        "deliveries": 10,
        "deliveries_per_s": 100,
        "feeds_per_s": 100,
        "server_cpu_ms_per_1k_deliveries": 50.0,
    }
    entry = {
        "replicas": 200,
        "rate": 100,
        "connections": 2000,
        "daphne": {"fanout": fan, "connects": {"connects_per_s": 60, "kib_per_connection": 30}},
        "uvicorn": {
            "fanout": fan,
            "connects": {"connects_per_s": 90, "kib_per_connection": 25},
            "ratios_to_daphne": {"p99": 1.0, "cpu_per_delivery": 0.5, "connects_per_s": 1.5},
        },
        "granian": {"skipped": "granian is not installed"},
    }
    rows = servers_rows(entry)
    assert [row[1].split(":")[0] for row in rows] == ["daphne", "uvicorn", "granian"]
    assert "connects/s 1.50x" in rows[1][3]
    assert "CPU/delivery 0.50x" in rows[1][3]
    assert "skipped: granian is not installed" in rows[2][1]
