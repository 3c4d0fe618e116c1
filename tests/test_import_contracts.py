"""The layer rules in pyproject's [tool.importlinter] hold: `make test` (CI) fails on a broken
contract, not only `make lint`. The contracts: the protocol imports no Django or Channels,
accounts imports no app above it, the SDK imports nothing of the server, core imports no app,
and services never import the interfaces that call them (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout
