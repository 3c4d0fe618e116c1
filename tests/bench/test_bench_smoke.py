"""The benchmark harness end to end at the smallest sizes, so `make bench` cannot rot.

It runs `python -m bench --smoke` for push ingest and catch-up on a fresh SQLite data dir and
checks that every figure is there and that the replicas really moved the documents. It asserts
no speed: speed targets belong in `bench/RESULTS.md`, not in tests on a shared machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_pushes_and_catches_up_with_baselines(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--backends",
            "sqlite",
            "--only",
            "push_ingest,catch_up,views",
            "--no-record",
            "--json",
            str(out),
            "--timeout",
            "240",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    run = json.loads(out.read_text())
    assert run["mode"] == "smoke"
    assert run["machine"]["cores"] >= 1
    assert len(run["load_start"]) == 3
    benchmarks = run["passes"]["sqlite"]["benchmarks"]

    push = benchmarks["push_ingest"]
    docs = push["baseline_batch_apply"]["docs"]
    assert push["baseline_batch_apply"]["stored"] == docs
    for key in ("one_replica", "four_replicas"):
        assert push[key]["processed"] == docs
        assert push[key]["stored"] == docs
        assert push[key]["docs_per_s"] > 0
        assert push[key]["ratio_to_baseline"] > 0

    catch_up = benchmarks["catch_up"]
    assert catch_up["baseline_raw_read"]["rows"] == catch_up["docs"]
    assert catch_up["baseline_changes_since"]["rows"] == catch_up["docs"]
    assert catch_up["replica"]["stored"] == catch_up["docs"]
    assert catch_up["replica"]["ratio_to_raw_read"] > 0

    views = benchmarks["views"]
    assert views["in_view"] == views["docs"] // 10
    assert views["sdk_view_replica"]["stored"] == views["in_view"]
    assert views["baseline_python_scan"]["documents"] == views["in_view"]

    assert "push ingest, 1 replica" in completed.stdout
    assert "catch-up" in completed.stdout
