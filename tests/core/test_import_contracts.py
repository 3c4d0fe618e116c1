"""The layer rules in pyproject's [tool.importlinter] hold: `make test` (CI) fails on a broken
contract, not only `make lint`. The contracts: the protocol imports no Django or Channels,
accounts imports no app above it, the SDK imports nothing of the server, core imports no app,
services never import the interfaces that call them, and each door (HTTP API, console,
GraphQL, CouchDB, topics) asks `accounts.access` from exactly one module, the one
docs/architecture.md names for it (docs/architecture.md)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


# Each door, and its access module: the one file docs/architecture.md's table names for it.
ACCESS_MODULES = {
    "api": "api.permissions",
    "console": "console.access",
    "graphqlapi": "graphqlapi.context",
    "couchdb": "couchdb.services",
    "topics": "topics.requests",
}


def test_each_door_asks_accounts_access_from_the_one_module_the_docs_name() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    table = (ROOT / "docs" / "architecture.md").read_text()
    for package, module in ACCESS_MODULES.items():
        [contract] = [
            c
            for c in contracts
            if c["type"] == "forbidden"
            and c["source_modules"] == [package]
            and c["forbidden_modules"] == ["accounts.access"]
        ]
        assert contract["ignore_imports"] == [f"{module} -> accounts.access"]
        path = module.replace(".", "/") + ".py"
        assert (ROOT / path).is_file()
        assert re.search(rf"^\| [^|]+ \| `{re.escape(path)}` \|", table, re.MULTILINE), path
