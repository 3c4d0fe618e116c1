"""The SDK's copy of the conflict rule runs every case of spec/conflicts.json.

The server's tests (tests/replication/test_conflicts.py) run the same file against the server's
copy, so the two cannot drift. The file is read by path: the SDK imports nothing of the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datagate_replica.clock import DELETE, WRITE, VersionKey, incoming_wins, version_key
from datagate_replica.store import Store, Version


def _cases_file() -> Path:
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "spec" / "conflicts.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("spec/conflicts.json: run the tests from a checkout of DataGate")


CASES: list[dict[str, Any]] = json.loads(_cases_file().read_text(encoding="utf-8"))["cases"]


def _key(raw: dict[str, Any]) -> VersionKey:
    kind = {"write": WRITE, "delete": DELETE}[raw["kind"]]
    return version_key(
        kind=kind, modified=raw["modified"], revision=raw["revision"], origin=raw["origin"]
    )


def _wire_version(doc_id: str, raw: dict[str, Any]) -> Version:
    """The version as a pull brings it: a delete carries only its time."""
    if raw["kind"] == "delete":
        return Version(doc_id, DELETE, raw["modified"], 0, "", None)
    return Version(doc_id, WRITE, raw["modified"], raw["revision"], raw["origin"], {"n": 1})


def test_the_cases_cover_every_outcome_and_kind() -> None:
    assert len(CASES) >= 20
    assert {c["winner"] for c in CASES} == {"incoming", "current", "same"}
    pairs = {(c["current"]["kind"], c["incoming"]["kind"]) for c in CASES if c["current"]}
    assert pairs == {
        ("write", "write"),
        ("write", "delete"),
        ("delete", "write"),
        ("delete", "delete"),
    }


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_rule_picks_the_expected_winner(case: dict[str, Any]) -> None:
    incoming = _key(case["incoming"])
    current = None if case["current"] is None else _key(case["current"])
    assert incoming_wins(incoming, current) == (case["winner"] == "incoming")
    if current is not None:  # the other way round, the other version wins
        assert incoming_wins(current, incoming) == (case["winner"] == "current")
        assert (incoming == current) == (case["winner"] == "same")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_a_pull_applies_the_expected_winner(case: dict[str, Any], tmp_path: Path) -> None:
    store = Store(tmp_path / "replica.sqlite3")
    store.bind(tenant="acme", collection="notes")
    if case["current"] is not None:
        store.apply_remote([_wire_version("doc", case["current"])])
    changes = store.apply_remote([_wire_version("doc", case["incoming"])])
    held = store.held("doc")
    assert held is not None
    winner = case["incoming"] if case["winner"] == "incoming" else case["current"]
    assert held.key() == _key(winner)
    assert bool(changes) == (case["winner"] == "incoming")
