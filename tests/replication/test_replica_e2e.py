"""The replica SDK and command line against a real daphne (PROTOCOL.md sections 4 and 5).

Replicas here are real `datagate_replica` clients (in this process, or as subprocesses when a
test kills one); the server is a real daphne on the test database, so the test reads the
server's state through `replication.selectors.collection_state` and compares hashes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from datagate_replica import Change, Replica, SyncError
from datagate_replica.store import Store, state_digest

from accounts.access import System
from replication.selectors import collection_state
from replication.services.engine import batch_apply, collection_get_or_create
from tests.support.server_processes import DaphneServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

CLI = Path(sys.executable).with_name("datagate-replica")


@pytest.fixture(scope="module")
def shared_daphne(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaphneServer]:
    """One daphne for the module (starting one costs seconds on a loaded machine)."""
    with django_db_blocker.unblock():
        server = DaphneServer.start(tmp_path=tmp_path_factory.mktemp("replica-e2e"))
    yield server
    server.stop()


@pytest.fixture
def daphne(shared_daphne: DaphneServer, transactional_db: Any) -> DaphneServer:
    """The module's daphne, restarted if the previous test killed it; the database is fresh."""
    if shared_daphne.process is None or shared_daphne.process.poll() is not None:
        shared_daphne.stop()
        shared_daphne.launch()
    return shared_daphne


@pytest.fixture
def writer_token(member: Any, issue_token: Any) -> str:
    return str(issue_token(member("writer", "writer"), "read write"))


@pytest.fixture
def notes(tenant: Any) -> Any:
    return collection_get_or_create(tenant=tenant, name="notes")[0]


@pytest.fixture
def replicas(daphne: Any, writer_token: str, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    opened: list[Replica] = []

    def open_replica(name: str, **options: Any) -> Replica:
        options.setdefault("reply_timeout", 30)
        replica = Replica(
            daphne.ws_url,
            "acme",
            "notes",
            options.pop("token", writer_token),
            path=tmp_path / f"{name}.sqlite3",
            name=name,
            **options,
        )
        opened.append(replica)
        return replica

    yield open_replica
    for replica in opened:
        replica.close()


def server_state(collection_id: int) -> dict[str, Any]:
    return collection_state(collection_id=collection_id)


def random_edits(replica: Replica, rng: random.Random, ids: list[str], count: int) -> None:
    for _ in range(count):
        doc_id = rng.choice(ids)
        if rng.random() < 0.25:
            replica.delete(doc_id)
        else:
            replica.put(doc_id, {"by": replica.replica_id[:6], "n": rng.randint(0, 999)})


def test_three_replicas_editing_offline_converge_with_the_server(
    replicas: Callable[..., Replica], notes: Any
) -> None:
    rng = random.Random(20261122)
    ids = [f"doc-{i}" for i in range(12)]
    first, second, third = replicas("one"), replicas("two"), replicas("three")
    for doc_id in ids[:8]:
        first.put(doc_id, {"seed": True})
    first.sync()
    second.sync()
    third.sync()
    assert second.get("doc-0") is not None  # the shared starting point
    for replica in (first, second, third):  # offline: same documents, edits and deletes
        random_edits(replica, rng, ids, 60)
    for _ in range(2):  # the first round pushes everything, the second pulls the rest
        for replica in (first, second, third):
            replica.sync()
    expected = state_digest(server_state(notes.pk))
    assert {replica.state_hash() for replica in (first, second, third)} == {expected}
    assert all(replica.store.journal_size() == 0 for replica in (first, second, third))
    assert len(server_state(notes.pk)["tombstones"]) > 0


def test_a_live_change_on_one_replica_reaches_another_through_its_callbacks(
    replicas: Callable[..., Replica],
) -> None:
    writer, reader = replicas("writer"), replicas("watcher")
    seen: list[Change] = []
    arrived = threading.Event()

    def on_change(change: Change) -> None:
        if change.source == "remote":
            seen.append(change)
            arrived.set()

    reader.on_change(on_change)
    writer.start()
    reader.start()
    writer.wait_live(30)
    reader.wait_live(30)
    writer.put("live-1", {"title": "hello"})
    wait_for(lambda: any(c.doc_id == "live-1" for c in seen), what="the put to arrive")
    writer.delete("live-1")
    wait_for(lambda: any(c.doc_id == "live-1" and c.deleted for c in seen), what="the delete")
    assert reader.get("live-1") is None
    assert reader.state_hash() == wait_for(
        lambda: writer.store.journal_size() == 0 and writer.state_hash(), what="writer settled"
    )


WORKER = """
import sys
from datagate_replica import Replica
url, token, path = sys.argv[1:4]
replica = Replica(url, "acme", "notes", token, path=path, push_chunk_size=10)
print("ready", flush=True)
replica.sync()
print("done", flush=True)
"""


def test_killing_a_replica_in_the_middle_of_a_push_loses_nothing(
    daphne: Any, writer_token: str, notes: Any, tmp_path: Path, replicas: Any
) -> None:
    path = tmp_path / "killed.sqlite3"
    store = Store(path)
    store.bind(tenant="acme", collection="notes")
    total = 1500
    for i in range(total):
        store.local_put(f"k{i:05d}", {"i": i})
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, daphne.ws_url, writer_token, str(path)],
        stdout=subprocess.PIPE,
    )
    try:
        wait_for(lambda: 0 < store.journal_size() < total, what="the push to start")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    left = store.journal_size()
    assert 0 < left < total, "the worker was not killed in the middle of its push"
    store.close()
    replica = replicas("killed")
    replica.sync()
    state = server_state(notes.pk)
    assert len(state["documents"]) == total
    assert replica.store.journal_size() == 0
    assert replica.state_hash() == state_digest(state)


def test_killing_the_server_in_the_middle_of_a_pull_loses_nothing(
    daphne: Any, replicas: Callable[..., Replica], notes: Any
) -> None:
    total = 1500
    for start in range(0, total, 500):
        batch_apply(
            actor=System("test"),
            collection_id=notes.pk,
            feed={
                "changeSet": [
                    {"_id": f"p{i:05d}", "_revision": 1, "_modified": 1_000 + i, "n": i}
                    for i in range(start, start + 500)
                ]
            },
            origin="seed",
        )
    replica = replicas("puller", pull_batch_size=10)
    pulled = 0

    def count(change: Change) -> None:
        nonlocal pulled
        pulled += 1

    replica.on_change(count)
    failure: list[BaseException] = []

    def pull() -> None:
        try:
            replica.sync()
        except SyncError as exc:
            failure.append(exc)

    puller = threading.Thread(target=pull)
    puller.start()
    wait_for(lambda: pulled > 0, what="the pull to start")
    daphne.stop(kill=True)
    puller.join(timeout=60)
    assert failure, "the pull finished before the server was killed"
    assert 0 < pulled < total
    assert replica.markers.seq == 0  # nothing half-pulled is taken for a checkpoint
    daphne.launch()
    replica.sync()
    state = server_state(notes.pk)
    assert replica.state_hash() == state_digest(state)
    assert replica.markers.seq == total


def test_a_readers_changes_are_rejected_once_and_kept_with_their_code(
    replicas: Callable[..., Replica], member: Any, issue_token: Any, notes: Any
) -> None:
    reader = replicas("reader", token=issue_token(member("reader", "reader"), "read write"))
    reader.put("nope", {"x": 1})
    report = reader.sync()
    assert [r.version.doc_id for r in report.rejected] == ["nope"]
    [kept] = reader.rejected()
    assert kept.code.startswith("DG-3")
    assert kept.error.startswith(kept.code)
    assert reader.store.journal_size() == 0
    again = reader.sync()
    assert again.rejected == []
    assert again.pushed == 0
    assert "nope" not in server_state(notes.pk)["documents"]


def test_a_bad_token_fails_the_sync_with_the_servers_reason(
    replicas: Callable[..., Replica],
) -> None:
    replica = replicas("stranger", token="not-a-token")
    replica.put("a", {"x": 1})
    with pytest.raises(SyncError, match="failed to validate token"):
        replica.sync()
    assert replica.store.journal_size() == 1  # kept for when a good token comes


def cli(daphne: Any, token: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATAGATE_URL": daphne.ws_url,
        "DATAGATE_TENANT": "acme",
        "DATAGATE_COLLECTION": "notes",
        "DATAGATE_TOKEN": token,
        "DATAGATE_REPLICA_FILE": str(path),
    }
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_command_line_works_as_the_readme_shows(
    daphne: Any, writer_token: str, tmp_path: Path, notes: Any
) -> None:
    laptop, phone = tmp_path / "laptop.sqlite3", tmp_path / "phone.sqlite3"
    put = cli(daphne, writer_token, laptop, "put", "n1", "title=hello", 'tags:=["a","b"]')
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["title"] == "hello"
    assert (
        cli(daphne, writer_token, laptop, "put", "n2", '{"title": "two", "done": false}').returncode
        == 0
    )
    assert cli(daphne, writer_token, laptop, "status").stdout.count("2 change(s) not yet") == 1
    synced = cli(daphne, writer_token, laptop, "sync")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith("pushed 2, pulled")
    assert cli(daphne, writer_token, phone, "sync").returncode == 0
    listed = cli(daphne, writer_token, phone, "ls", "done:=false")
    assert [json.loads(line)["_id"] for line in listed.stdout.splitlines()] == ["n2"]
    got = cli(daphne, writer_token, phone, "get", "n1")
    assert json.loads(got.stdout)["tags"] == ["a", "b"]
    assert cli(daphne, writer_token, phone, "rm", "n1").returncode == 0
    assert cli(daphne, writer_token, phone, "get", "n1").returncode == 1
    progress = cli(daphne, writer_token, tmp_path / "tablet.sqlite3", "sync", "--progress")
    assert progress.returncode == 0, progress.stderr
    assert "pulling [" in progress.stderr
    assert "100% 2/2" in progress.stderr
    assert cli(daphne, writer_token, phone, "sync").returncode == 0
    assert cli(daphne, writer_token, laptop, "sync").returncode == 0
    assert cli(daphne, writer_token, laptop, "get", "n1").returncode == 1
    status = json.loads(cli(daphne, writer_token, laptop, "status", "--json").stdout)
    assert status["journal"] == 0
    assert status["rejected"] == []
    assert status["markers"]["collectionMarker"] == 3  # put n1, put n2, rm n1
    server = server_state(notes.pk)
    assert set(server["documents"]) == {"n2"}
    assert set(server["tombstones"]) == {"n1"}
    assert cli(daphne, "", laptop, "sync").returncode == 2  # no token: a clear usage error


def test_watch_prints_every_change_as_it_arrives(
    daphne: Any, writer_token: str, tmp_path: Path, replicas: Callable[..., Replica]
) -> None:
    env = {
        **os.environ,
        "DATAGATE_URL": daphne.ws_url,
        "DATAGATE_TENANT": "acme",
        "DATAGATE_COLLECTION": "notes",
        "DATAGATE_TOKEN": writer_token,
        "DATAGATE_REPLICA_FILE": str(tmp_path / "watch.sqlite3"),
    }
    watcher = subprocess.Popen(
        [str(CLI), "watch"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        writer = replicas("writer")
        writer.start()
        writer.wait_live(30)
        writer.put("w1", {"title": "seen"})
        wait_for(lambda: 'remote put w1 {"title": "seen"}' in lines, what="watch to print the put")
        writer.delete("w1")
        wait_for(lambda: "remote rm w1" in lines, what="watch to print the delete")
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(timeout=15)
        except subprocess.TimeoutExpired:
            watcher.kill()
    assert watcher.returncode == 0


def test_a_replica_away_past_the_tombstone_horizon_resets_and_keeps_its_pending_changes(
    replicas: Callable[..., Replica], notes: Any
) -> None:
    from replication.models import Collection, Tombstone

    # Without range checks (the server's summaries are bypassed below): the reset snapshot.
    away, other = replicas("away", ranges=False), replicas("other")
    away.put("kept", {"n": 1})
    away.put("purged", {"n": 2})
    away.sync()
    other.sync()
    other.delete("purged")
    other.sync()
    # The server collects the tombstone: "away" can no longer learn of the delete by seq.
    Tombstone.objects.filter(collection=notes, doc_id="purged").delete()
    last_seq = Collection.objects.get(pk=notes.pk).last_seq
    Collection.objects.filter(pk=notes.pk).update(purge_seq=last_seq)
    away.put("offline", {"n": 3})  # pending when the reset arrives
    report = away.sync()
    assert report.reset
    assert not report.restored
    assert away.get("purged") is None
    assert away.get("offline") is not None
    assert away.store.journal_size() == 0
    assert away.state_hash() == state_digest(server_state(notes.pk))


def test_after_the_server_is_restored_from_an_older_backup_replicas_push_back_what_it_lost(
    replicas: Callable[..., Replica], notes: Any
) -> None:
    from replication.models import Collection, Document, JournalEntry

    replica = replicas("survivor", ranges=False)  # the reset snapshot (see above)
    for doc_id in ("a", "b", "c"):
        replica.put(doc_id, {"v": doc_id})
    replica.sync()
    # Restore a backup taken after "a" was written: b and c are gone, the epoch is new.
    Document.objects.filter(collection=notes, doc_id__in=["b", "c"]).delete()
    JournalEntry.objects.filter(collection=notes, seq__gt=1).delete()
    Collection.objects.filter(pk=notes.pk).update(last_seq=1, epoch=notes.epoch + 1)
    replica.put("d", {"v": "d"})  # made while the server was down
    report = replica.sync()
    assert report.restored
    assert report.requeued == 2
    state = server_state(notes.pk)
    assert set(state["documents"]) == {"a", "b", "c", "d"}
    assert replica.state_hash() == state_digest(state)
    assert replica.markers.epoch == notes.epoch + 1


def test_live_replicas_reconnect_after_the_server_restarts_and_catch_up(
    daphne: Any, replicas: Callable[..., Replica], notes: Any
) -> None:
    options = {"backoff_base": 0.2, "backoff_cap": 1.0}
    writer, watcher = replicas("writer", **options), replicas("watcher", **options)
    arrived: set[str] = set()
    watcher.on_change(lambda change: arrived.add(change.doc_id))
    writer.start()
    watcher.start()
    writer.wait_live(30)
    watcher.wait_live(30)
    daphne.stop(kill=True)
    wait_for(lambda: not writer.engine.live and not watcher.engine.live, what="both to notice")
    writer.put("while-down", {"n": 1})  # journaled; sent once the link is back
    daphne.launch()
    wait_for(lambda: "while-down" in arrived, what="the change made while the server was down")
    wait_for(lambda: writer.store.journal_size() == 0, what="the writer's journal to drain")
    assert watcher.state_hash() == writer.state_hash() == state_digest(server_state(notes.pk))
