"""The SDK stands alone: it imports nothing of the server and its command line explains itself."""

from __future__ import annotations

import subprocess
import sys

import pytest
from datagate_replica.cli import main, parse_fields


def test_importing_the_sdk_loads_nothing_of_the_server() -> None:
    code = (
        "import sys, datagate_replica, datagate_replica.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('django', 'replication', 'accounts', 'topics', 'datagate_site', 'channels')]; "
        "print(','.join(bad))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert loaded.stdout.strip() == ""


def test_help_names_every_command_and_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("put", "get", "rm", "ls", "sync", "watch", "status", "DATAGATE_TOKEN"):
        assert word in text


def test_fields_parse_from_json_or_pairs() -> None:
    assert parse_fields(['{"a": 1}']) == {"a": 1}
    assert parse_fields(["a=text", "b:=3", 'c:=["x"]', "d=x:=y"]) == {
        "a": "text",
        "b": 3,
        "c": ["x"],
        "d": "x:=y",
    }


@pytest.mark.parametrize("bad", [["nonsense"], ["a:=not json"], ["=x"], ["[1]"]])
def test_bad_fields_are_a_usage_error(
    bad: list[str], tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--tenant",
            "acme",
            "--collection",
            "notes",
            "--file",
            f"{tmp_path}/r.db",
            "put",
            "x",
            *bad,
        ]
    )
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_local_commands_work_offline(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--tenant", "acme", "--collection", "notes", "--file", f"{tmp_path}/r.db"]
    assert main([*base, "put", "a", "title=x"]) == 0
    assert main([*base, "put", "--merge", "a", "n:=2"]) == 0
    capsys.readouterr()
    assert main([*base, "get", "a"]) == 0
    assert '"n": 2' in capsys.readouterr().out
    assert main([*base, "rm", "a", "missing"]) == 1
    assert main([*base, "status"]) == 0
    assert "journal     1 change(s)" in capsys.readouterr().out
    assert main(["--file", f"{tmp_path}/r.db", "ls"]) == 2  # no tenant/collection
