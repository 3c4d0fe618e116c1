"""The CI-sized chaos run: `make chaos` for about a minute with a fixed seed (docs/guarantees.md).

It starts its own PostgreSQL database, redis-server and two daphnes behind the suite's proxy,
lets the clients work while faults strike, and fails on any broken promise the checker finds
(lost or resurrected writes, feed gaps, non-convergence, topic offsets). Needs PostgreSQL and
the redis-server binary: required in CI, skipped with a reason elsewhere. `make chaos` runs
longer and with any seed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chaos.topology import REDIS_SERVER, ROOT
from tests.support.external_services import TEST_DATABASE_URL, require_postgres, unavailable

pytestmark = [pytest.mark.services, pytest.mark.e2e, pytest.mark.chaos]

SEED = 1605
DURATION = 36  # two epochs of faults, each followed by a heal and a convergence check


def require_redis_server() -> str:
    if REDIS_SERVER and os.access(REDIS_SERVER, os.X_OK):
        return REDIS_SERVER
    message = "redis-server is not installed (the chaos run starts its own)"
    unavailable(message)


@pytest.mark.timeout(420)
def test_a_short_chaos_run_loses_nothing_and_converges_after_every_heal() -> None:
    require_postgres()
    require_redis_server()
    env = {**os.environ, "TEST_DATABASE_URL": TEST_DATABASE_URL}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos",
            "--duration",
            str(DURATION),
            "--epoch",
            str(DURATION // 2),
            "--seed",
            str(SEED),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    report = result.stdout + result.stderr[-5000:]
    assert result.returncode == 0, report
    assert "PASS (seed 1605)" in result.stdout
    assert "lost: 0" in result.stdout
    assert "resurrected: 0" in result.stdout
