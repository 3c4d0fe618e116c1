"""A newcomer's mistakes on the command line get one line on stderr, never a traceback."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest
from datagate_replica.cli import glue_option_values, main
from datagate_replica.sync import check_url, describe_close


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    for name in ("DATAGATE_URL", "DATAGATE_TOKEN", "DATAGATE_REPLICA_FILE"):
        monkeypatch.delenv(name, raising=False)
    return ["--tenant", "acme", "--collection", "notes", "--file", str(tmp_path / "r.db")]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("127.0.0.1:8000", "needs a scheme: ws://127.0.0.1:8000"),
        ("ws://host:notaport", "port must be a number"),
        ("ws://host:99999", "port must be a number"),
        ("ftp://host", "needs a scheme"),
        ("ws://", "no host name"),
    ],
)
def test_a_bad_url_is_one_line_and_status_2(
    base: list[str], capsys: pytest.CaptureFixture[str], url: str, words: str
) -> None:
    assert main([*base, "--url", url, "--token", "t", "sync"]) == 2
    assert words in one_line_error(capsys)


@pytest.mark.parametrize(
    "argv",
    [["put", "k", "--bogus"], ["frob"], ["ls", "--limit", "x"], ["sync", "--merge"]],
)
def test_a_bad_option_is_one_line_and_status_2(
    base: list[str], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *argv])
    assert exit_info.value.code == 2
    assert one_line_error(capsys).startswith("datagate-replica: error:")


def test_options_go_in_any_position(base: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*base, "put", "k", "title=a", "n:=1"]) == 0
    assert main(["put", "k", "--merge", "x=1", *base]) == 0
    capsys.readouterr()
    assert main([*base, "get", "k"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "a"


def test_put_reads_a_document_from_stdin_or_a_file(
    base: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    big = {"text": "x" * 300_000}  # over the 128 KiB an argument may have
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(big)))
    assert main([*base, "put", "s", "-"]) == 0
    (tmp_path / "doc.json").write_text(json.dumps({"from": "file"}))
    assert main([*base, "put", "f", f"@{tmp_path / 'doc.json'}"]) == 0
    capsys.readouterr()
    assert main([*base, "get", "s"]) == 0
    assert len(json.loads(capsys.readouterr().out)["text"]) == 300_000
    assert main([*base, "put", "g", "@/nonexistent/doc.json"]) == 2
    assert "cannot read" in one_line_error(capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO("[1, 2]"))
    assert main([*base, "put", "h", "-"]) == 2
    assert "must be a JSON object" in one_line_error(capsys)


def test_a_token_starting_with_a_dash_is_a_token() -> None:
    assert glue_option_values(["--token", "-abc", "sync"]) == ["--token=-abc", "sync"]
    assert glue_option_values(["put", "--", "--token", "-x"]) == ["put", "--", "--token", "-x"]


def test_watch_reports_each_failed_attempt_and_once_gives_up(
    base: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    assert main([*base, "--url", url, "--token", "-abc", "watch", "--once"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to" in err
    assert "Traceback" not in err


def test_disconnects_are_described_in_words() -> None:
    assert "without a close frame" in describe_close(None)
    refused = describe_close(4401, "DG-1001 token expired")
    assert refused == (
        "connection closed: the token was refused (close 4401, DG-1001): token expired"
    )
    assert "going away" in describe_close(1001)
    assert "None" not in describe_close(None, "")


def test_check_url_accepts_every_scheme_the_sdk_speaks() -> None:
    for url in ("ws://h:1", "wss://h", "http://h:8000", "https://h/base"):
        assert check_url(url) == url


def test_a_document_too_large_for_a_frame_is_one_line_and_status_2(
    base: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATAGATE_MAX_FRAME_BYTES", raising=False)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "x" * (2 * 1024 * 1024)}), encoding="utf-8")
    assert main([*base, "put", "huge", f"@{big}"]) == 2
    assert "must fit in one websocket frame" in one_line_error(capsys)
    # A server that takes larger frames: say so, and the same document is accepted.
    assert main([*base, "--max-frame-bytes", str(4 * 1024 * 1024), "put", "huge", f"@{big}"]) == 0
    capsys.readouterr()
    assert main([*base, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["journal"] == 1
