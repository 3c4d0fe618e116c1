"""The `datagate-replica` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("datagate-replica: commands arrive with the replica SDK", file=sys.stderr)
    return 2
